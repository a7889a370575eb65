"""The command line: thin click commands that parse, call the Queue facade and render.

Data goes to stdout, diagnostics to stderr; every read command has --json; a user's
mistake is one line and exit 2, an operational failure one line and exit 1.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Optional

import click

from . import models
from .command import (App, Duration, Integer, emit_json, exit_for_states, fmt_seconds, get_queue, job_options,
                      pass_app, render_jobs, short, spec_from_options, table, integer_flag)
from .errors import JobValidationError, QueueError, UsageError
from .term import for_terminal

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class QueuectlGroup(click.Group):
    """Adds the commands that plugins register through ``queuectl_register_commands``."""

    def _plugin_commands(self, ctx: click.Context) -> dict:
        app = ctx.find_object(App)
        if app is None:    # commands are resolved before the group's callback runs
            app = ctx.obj = App(**{k: ctx.params.get(k) for k in ("config", "db", "plugins_dir")})
        cached = getattr(app, "plugin_commands", None)
        if cached is None:
            group = click.Group("plugins")
            hook = app.queue.pm.hook
            hook.queuectl_register_commands(cli=group)
            cached = app.plugin_commands = dict(group.commands)
        return cached

    def _worker_options(self, ctx: click.Context) -> None:
        """Add the options plugins give `worker start` (asked only for that command: it imports them)."""
        self._plugin_commands(ctx)
        app = ctx.find_object(App)
        if getattr(app, "worker_options_added", False):
            return
        app.worker_options_added = True
        known = {param.name for param in worker_start.params}
        for options in app.queue.pm.hook.queuectl_worker_options():
            for option in options or []:
                if option.name not in known:      # the command object outlives one invocation
                    worker_start.params.append(option)
                    known.add(option.name)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        return self._plugin_commands(ctx).get(name)

    def list_commands(self, ctx):
        names = set(super().list_commands(ctx))
        try:
            names.update(self._plugin_commands(ctx))
        except QueueError:
            pass
        return sorted(names)


# --- commands ---------------------------------------------------------------------------------


@click.group(cls=QueuectlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="PATH", help="config.yaml to use (else $QUEUECTL_CONFIG, ./config.yaml, "
              "the user's config).")
@click.option("--db", metavar="PATH|URL", help="Store location (overrides the config; also $QUEUECTL_DB).")
@click.option("--plugins-dir", metavar="DIR", help="Load every *.py in DIR as a plugin.")
@click.version_option(package_name="queuectl")
@click.pass_context
def cli(ctx, config, db, plugins_dir):
    """queuectl: run shell commands as background jobs, with retries and a dead letter queue."""
    if ctx.obj is None:
        ctx.obj = App(config, db, plugins_dir)


@cli.command()
@pass_app
def init(app):
    """Create the store (idempotent; also done on first use)."""
    store = app.queue.store
    click.echo(f"store ready: {store.describe()['location']}")


def _read_jobs(source) -> tuple[list, list]:
    """JSON lines, or one JSON array, from a file or stdin (read as bytes: errors name the line);
    returns the jobs and where each one is ("line 3", "job 3 of the array")."""
    data = source.read()
    lines = data.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"line {number}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
    text = data.decode("utf-8")
    if text.lstrip().startswith("["):
        jobs = strict_json(text, "malformed JSON")       # starts with "[": a list once parsed
        return jobs, [f"job {n} of the array" for n in range(1, len(jobs) + 1)]
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    jobs = [strict_json(line, f"line {n}: malformed JSON") for n, line in numbered]
    return jobs, [f"line {n}" for n, _ in numbered]


def _enqueue_file(queue, specs: list, where: list) -> list:
    """Enqueue a file's jobs; a refused one is named by its line."""
    try:
        return queue.enqueue_many(specs, source="file")
    except JobValidationError as exc:
        for spec, place in zip(specs, where):
            try:
                queue.build_job(spec)
            except JobValidationError as error:
                raise JobValidationError(f"{place}: {error}") from None
        raise


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str, what: str) -> Any:
    """json.loads without NaN/Infinity, with one UsageError for every way a text can fail to be JSON."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:            # NaN/Infinity, or an integer of thousands of digits
        raise UsageError(f"{what}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{what}: nested too deeply") from None


@cli.command()
@click.argument("job_json", required=False, metavar="[JSON]")
@click.option("-f", "--file", "jobs_file", type=click.File("rb"), help="Read many jobs, JSON lines or a JSON array "
              "('-' for stdin); all are enqueued or none.")
@job_options
def enqueue(job_json, jobs_file, **options):
    """Enqueue a job; prints its id.

    \b
    queuectl enqueue --command "echo hi"
    queuectl enqueue '{"id": "job1", "command": "sleep 2"}'
    queuectl enqueue --command "make report" --delay 10m --after build1
    queuectl enqueue --file jobs.jsonl
    """
    flags = spec_from_options(options)
    if jobs_file is not None:
        if job_json is not None:
            raise UsageError("give either a JSON job or --file, not both")
        specs, where = _read_jobs(jobs_file)
        specs = [dict(spec, **flags) if isinstance(spec, dict) else spec for spec in specs]
        click.echo("\n".join(_enqueue_file(get_queue(), specs, where)))
        return
    elif job_json is not None:
        spec = strict_json(job_json, "malformed JSON job")
        if not isinstance(spec, dict):
            raise UsageError("the JSON job must be an object, like '{\"command\": \"echo hi\"}'")
        specs, source = [dict(spec, **flags)], "cli"
    else:
        if "command" not in flags:
            raise UsageError("nothing to enqueue: give --command, a JSON job or --file")
        specs, source = [flags], "cli"
    ids = get_queue().enqueue_many(specs, source=source)
    click.echo("\n".join(ids))          # one write: a bulk enqueue prints 100,000 ids


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
def cancel(job_ids):
    """Cancel jobs: a pending job never runs; a running job's processes are stopped."""
    queue = get_queue()
    for job_id in job_ids:
        click.echo(f"{job_id} {queue.cancel(job_id)}")


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
def retry(job_ids):
    """Run completed, dead or cancelled jobs again, with a fresh retry budget."""
    queue = get_queue()
    for job_id in job_ids:
        job = queue.retry(job_id, (models.COMPLETED, models.DEAD, models.CANCELLED))
        click.echo(f"{job.id} {job.state}")


@cli.command()
@click.option("--state", "states", multiple=True, required=True,
              type=click.Choice(models.FINISHED_STATES), help="Purge jobs in this state (repeatable).")
@click.option("--older-than", required=True, type=Duration(models.RANGES["age"]),
              help="Only jobs last updated longer ago than this: 7d, 12h, 30m.")
def purge(states, older_than):
    """Delete finished jobs and their attempts (dependencies they satisfied stay satisfied)."""
    count = get_queue().purge(states, older_than)
    click.echo(f"purged {count} job(s)")


@cli.group("queue")
def queue_group():
    """Named queues: concurrency limits across all workers and hosts, pause and resume."""


@queue_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def queue_list(as_json):
    """Queues with their limit, pause state and job counts."""
    rows = get_queue().queues()
    if as_json:
        emit_json(rows)
        return
    table(({**r, "concurrency": r["concurrency"] or "-", "paused": "yes" if r["paused"] else ""} for r in rows),
          ["name", "concurrency", "paused", "pending", "processing"])


@queue_group.command("limit")
@click.argument("name")
@click.argument("limit")
def queue_limit(name, limit):
    """At most LIMIT jobs of queue NAME run at once, across all pools ('none' removes the limit)."""
    if limit.lower() in ("none", "unlimited"):
        value = None
    else:
        value = integer_flag("limit", limit, models.RANGES["concurrency"])
    row = get_queue().set_queue(name, concurrency=value)
    click.echo(f"{name}: limit {row['concurrency'] or 'none'}")


@queue_group.command("pause")
@click.argument("name")
def queue_pause(name):
    """Start nothing new from queue NAME; running jobs finish."""
    get_queue().set_queue(name, paused=True)
    click.echo(f"{name}: paused")


@queue_group.command("resume")
@click.argument("name")
def queue_resume(name):
    """Let queue NAME run again."""
    get_queue().set_queue(name, paused=False)
    click.echo(f"{name}: resumed")


class WorkerGroup(click.Group):
    def get_command(self, ctx, name):
        if name == "start":     # plugins may add options to `worker start`
            cli._worker_options(ctx.find_root())
        return super().get_command(ctx, name)


@cli.group(cls=WorkerGroup)
def worker():
    """Run or stop worker pools."""


@worker.command("start")
@click.option("-n", "--count", default=1, show_default=True, type=Integer(models.RANGES["workers"]),
              help="Worker processes in this pool.")
@click.option("--burst", is_flag=True, help="Exit 0 once nothing is runnable, processing or waiting for a retry.")
@click.option("-v", "--verbose", is_flag=True, help="Log every attempt to stderr.")
@click.option("--queue", "queues", help="Only run jobs of these queues: NAME[,NAME...] (default: all).")
def worker_start(count, burst, verbose, queues, **options):
    """Start a pool of COUNT workers in the foreground, until stopped.

    SIGTERM, SIGINT or `queuectl worker stop`: running jobs finish, then the pool exits 0.
    A second signal stops the running commands and records them as interrupted, to be retried.
    """
    from .worker import Pool

    queue = get_queue()
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    for name in names or ():
        if not models.QUEUE_PATTERN.match(name):
            raise UsageError(f"queue name {name!r} is not valid")
    sys.exit(Pool(queue, count, burst=burst, verbose=verbose, options=options, queues=names).run())


@worker.command("stop")
def worker_stop():
    """Ask every running pool that shares this store to finish its jobs and exit."""
    count = get_queue().request_stop()
    click.echo(f"stop requested for {count} pool(s)" if count else "no pool is running")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json):
    """The config and store in use, jobs per state, and active workers."""
    data = get_queue().status()
    if as_json:
        emit_json(data)
        return
    store = data["store"]
    click.echo(f"config:  {data['config_file'] or '(none: built-in defaults)'}")
    click.echo(f"store:   {store['backend']} {store['location']} (schema {store['schema_version']})")
    click.echo("jobs:    " + "  ".join(f"{state} {n}" for state, n in data["counts"].items()))
    for section, values in data["plugins"].items():
        click.echo(f"{section + ':':9}" + "  ".join(f"{k} {v}" for k, v in values.items()))
    workers = [w for w in data["workers"] if w["kind"] == "worker"]
    click.echo(f"workers: {len(workers)}")
    if workers:
        table(({"pid": w["pid"], "host": w["host"], "job": w["job_id"] or "(idle)",
                "since": models.iso(w["started_at"])} for w in workers), ["pid", "host", "job", "since"])


@cli.command("list")
@click.option("--state", help="Only jobs in this state (pending, processing, completed, failed, dead, cancelled).")
@click.option("--limit", type=Integer(), help="At most this many jobs.")
@click.option("--offset", type=Integer(), default=0, help="Skip this many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
def list_jobs(state, limit, offset, as_json):
    """List jobs in enqueue order."""
    render_jobs(get_queue().list(state, limit, offset), as_json)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(job_id, as_json):
    """One job with all its attempts."""
    queue = get_queue()
    job = queue.get(job_id)
    attempts = queue.attempts(job_id)
    if as_json:
        emit_json(dict(job.to_dict(), history=[a.to_dict() for a in attempts]))
        return
    for key, value in job.to_dict().items():
        if value not in (None, {}, ""):
            click.echo(f"{key + ':':14} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    if attempts:
        click.echo("")
        table(({"attempt": a.attempt, "outcome": a.outcome, "exit": a.exit_code if a.signal is None else
                f"signal {a.signal}", "duration": fmt_seconds(a.duration), "started": models.iso(a.started_at),
                "error": short(a.error, 40)} for a in attempts),
              ["attempt", "outcome", "exit", "duration", "started", "error"])


@cli.command()
@click.argument("job_id")
@click.option("--attempt", type=Integer(models.RANGES["attempt"]), help="Only this attempt (from 1).")
@click.option("-f", "--follow", is_flag=True, help="Stream the output as it is produced, across retries, until "
              "the job is terminal; exit like `wait`.")
@click.option("--stdout", "only", flag_value="stdout", help="Only the job's stdout.")
@click.option("--stderr", "only", flag_value="stderr", help="Only the job's stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def logs(job_id, attempt, follow, only, as_json):
    """Output, exit code, duration and time of each attempt of a job (the running one so far)."""
    if follow:
        if as_json or attempt is not None:
            raise UsageError("--follow cannot be combined with --json or --attempt")
        raise click.exceptions.Exit(follow_logs(get_queue(), job_id, only))
    entries = get_queue().logs(job_id, attempt)
    if as_json:
        emit_json(entries)
        return
    for entry in entries:
        click.echo(attempt_header(entry))
        for stream in (only,) if only else ("stdout", "stderr"):
            if entry[stream]:
                click.echo(f"--- {stream}")
                click.echo(for_terminal(entry[stream].rstrip("\n")))


def attempt_header(entry: dict) -> str:
    """``=== attempt N: ...``: how it ended, or that it is still running."""
    if entry.get("running"):
        return (f"=== attempt {entry['attempt']}: running since {entry['created_at']} "
                f"({entry['duration']:.1f}s so far) on {entry['host']}")
    how = f"exit {entry['exit_code']}" if entry["signal"] is None else f"signal {entry['signal']}"
    return (f"=== attempt {entry['attempt']}: {entry['outcome']} ({how}) at {entry['created_at']} "
            f"in {entry['duration']:.3f}s" + (f": {for_terminal(entry['error'])}" if entry["error"] else ""))


def follow_logs(queue, job_id: str, only: Optional[str]) -> int:
    """``logs --follow``: job output to stdout (its stderr to stderr, unless one stream is picked), exactly
    as printed when piped; a header line per attempt on stderr. Returns the exit code, like `wait`."""
    sinks = {name: OutputWriter(sys.stdout if only or name == "stdout" else sys.stderr)
             for name in ("stdout", "stderr")}
    try:
        for event in queue.follow(job_id):
            kind = event[0]
            if kind == "attempt":
                click.echo(f"=== attempt {event[1]}" + (" (running)" if event[2] is None else ""), err=True)
            elif kind == "output" and only in (None, event[1]):
                sinks[event[1]].write(event[2])
            elif kind == "ended" and event[2] is not None:
                click.echo(attempt_header(event[2]), err=True)
            elif kind == "done":
                click.echo(f"=== job {job_id} is {event[1].state}", err=True)
                return exit_for_states([event[1].state])
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


class OutputWriter:
    """Job output as it came when piped; decoded (a character split between chunks kept whole) and
    escaped on a terminal."""

    def __init__(self, stream):
        import codecs

        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        if self.stream.isatty():
            self.stream.write(for_terminal(self.decoder.decode(data), self.stream))
        else:
            self.stream.flush()
            self.stream.buffer.write(data)
        self.stream.flush()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(as_json):
    """Runs, failures, durations and throughput."""
    data = get_queue().stats()
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key.endswith("duration"):
            value = fmt_seconds(value)
        elif key.startswith("throughput"):
            value = "-" if value is None else f"{value:.2f} runs/s"
        click.echo(f"{key + ':':16} {value}")


@cli.group("config")
def config_group():
    """Read and change settings (stored settings reach running workers without a restart)."""


@config_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
def config_set(key, value):
    """Store a setting in the store, for every worker and command that uses it."""
    parsed = get_queue().config_set(key, value)
    click.echo(f"{key} = {json.dumps(parsed)}")


@config_group.command("unset")
@click.argument("key")
def config_unset(key):
    """Remove a stored setting (config.yaml or the default applies again)."""
    removed = get_queue().config_unset(key)
    click.echo(f"{key}: {'removed from the store' if removed else 'was not set in the store'}")


@config_group.command("get")
@click.argument("key")
def config_get(key):
    """Print a setting's value."""
    value, _source = get_queue().config.lookup(key)
    click.echo(json.dumps(value) if not isinstance(value, str) else value)


@config_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_list(as_json):
    """Every setting, its value and where the value comes from."""
    rows = get_queue().config.items()
    if as_json:
        emit_json(rows)
        return
    table(({"key": r["key"], "value": json.dumps(r["value"]), "source": r["source"], "plugin": r["plugin"]}
           for r in rows), ["key", "value", "source", "plugin"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json):
    """Loaded plugins and the hooks each implements."""
    from .plugins import describe

    data = describe(get_queue().pm)
    if as_json:
        emit_json(data)
        return
    for entry in data:
        click.echo(f"{entry['name']} ({entry['origin']})")
        for hook in entry["hooks"]:
            click.echo(f"  {hook}")


def main(argv: Optional[list] = None) -> None:
    """Entry point: one line on stderr and exit 1 or 2 for every error a user can cause."""
    try:
        code = cli.main(args=argv, prog_name="queuectl", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool):
            sys.exit(code)            # ctx.exit(N) / click Exit(N): click returns N outside standalone mode
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("queuectl: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"queuectl: error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except QueueError as exc:
        click.echo(f"queuectl: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILURE)
    sys.exit(EXIT_OK)
