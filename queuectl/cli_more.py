"""The rest of the command line (see cli.py): the commands a short invocation needs least, defined
when one of them is named or the commands are listed (``queuectl --help``, completion)."""
from __future__ import annotations

import sys
from typing import Any, Optional

import click

from . import models
from ._lazy import LazyImport
from .cli import EXIT_OK, ArgvCommand, QueuectlCommand, QueuectlContext, _epoch, cli, given_argv
from .command import (Duration, Integer, attempts_text, complete_job_ids, complete_queues, echo, emit_json,
                      exit_for_states, fmt_seconds, get_queue, labels_text, parse_pairs, read_command,
                      table)
from .errors import UsageError
from .screen import state_text, when
from .term import for_terminal, write_output

json = LazyImport("json", globals())


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_job_ids)
def cancel(job_ids):
    """Cancel jobs: a pending job never runs; a running job's processes are stopped.

    \b
    Example:
      queuectl cancel 3f2a        # a unique prefix of the id is enough
    """
    queue = get_queue()
    for ref in job_ids:
        job_id = queue.resolve(ref)
        click.echo(f"{job_id} {queue.cancel(job_id)}")


EDIT_OPTIONS = (
    click.option("-c", "--command", "command", metavar="CMD", help="The new shell command (an argv job becomes a shell job)."),
    click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable (repeatable)."),
    click.option("--unset-env", multiple=True, metavar="KEY", help="Remove a variable (repeatable)."),
    click.option("--cwd", metavar="DIR", help="The new working folder."),
    click.option("--timeout", metavar="DURATION", help="The new timeout (90, 10m, 1h30m), or 'none'."),
    click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Set a label (repeatable)."),
    click.option("--unset-label", multiple=True, metavar="KEY", help="Remove a label (repeatable)."),
)


def edit_options(func):
    for option in reversed(EDIT_OPTIONS):
        func = option(func)
    return func


def edit_changes(job, options: dict, argv: Optional[list]) -> dict:
    """What the edit options ask to change, as full new values (env and labels merged with the job's)."""
    changes: dict[str, Any] = {}
    if options.get("command") is not None and argv is not None:
        raise UsageError("give either --command (run by the shell) or -- CMD ARG... (run without one)")
    if options.get("command") is not None:
        changes["command"] = options["command"]
    if argv is not None:
        if not argv:
            raise UsageError("nothing after --: give the program to run and its arguments")
        changes["argv"] = argv
    for field, flag, unset in (("env", "--env", "unset_env"), ("labels", "--label", "unset_label")):
        if options.get(field) or options.get(unset):
            given = parse_pairs(flag, options.get(field) or ())
            both = [key for key in options.get(unset) or () if key in given]
            if both:
                raise UsageError(f"{flag} {both[0]} and --unset-{flag[2:]} {both[0]}: give one of them")
            value = dict(getattr(job, field), **given)
            for key in options.get(unset) or ():
                value.pop(key, None)
            changes[field] = value
    if options.get("cwd") is not None:
        changes["cwd"] = options["cwd"]
    if options.get("timeout") is not None:
        changes["timeout"] = None if options["timeout"].lower() == "none" else _duration("--timeout", options["timeout"])
    return changes


def _duration(option: str, value: str) -> float:
    try:
        return models.parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


@cli.command(cls=ArgvCommand)
@click.argument("job_id", shell_complete=complete_job_ids)
@edit_options
@click.option("--json", "as_json", is_flag=True, help="Print the edited job as JSON.")
def edit(job_id, as_json, **options):
    """Change a pending, failed, dead or cancelled job before it runs again.

    The command, env, cwd, timeout and labels can change; the values before are kept in the
    job's edit history (`show`), and its attempts stay. A dead or cancelled job stays so until
    `queuectl retry` (or use `retry ID --command ...` to do both at once).

    \b
    Examples:
      queuectl edit 3f2a --command "make report FAST=1"
      queuectl edit 3f2a --env DEBUG=1 --unset-env PROXY --timeout 10m
      queuectl edit 3f2a -- ./report.sh --fast
    """
    queue = get_queue()
    job = queue.get(job_id)
    changes = edit_changes(job, options, given_argv())
    if not changes:
        raise UsageError("nothing to change: give --command, --env, --cwd, --timeout, --label or -- CMD ARG...")
    edited = queue.edit(job.id, changes)
    if as_json:
        emit_json(edited.to_dict())
        return
    click.echo(f"{edited.id} {edited.state}: edited {', '.join(sorted(edited.edits[-1]['before'])) or 'nothing'}")


@cli.command(cls=ArgvCommand)
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_job_ids)
@edit_options
def retry(job_ids, **options):
    """Run completed, dead or cancelled jobs again, with a fresh retry budget.

    With edit options (as `queuectl edit` has them) the jobs are changed and retried in one step;
    their attempts and edit history are kept.

    \b
    Examples:
      queuectl retry 3f2a 9c1e
      queuectl retry 3f2a --command "make report FAST=1"
    """
    from .queue import RETRYABLE

    queue = get_queue()
    argv = given_argv()
    for ref in job_ids:
        job = queue.get(ref)
        changes = edit_changes(job, options, argv)
        if changes:
            job = queue.edit(job.id, changes, retry=True)
        else:
            job = queue.retry(job.id, RETRYABLE)
        click.echo(f"{job.id} {job.state}")


@cli.command()
@click.option("--state", "states", multiple=True, required=True,
              type=click.Choice(models.FINISHED_STATES), help="Purge jobs in this state (repeatable).")
@click.option("--older-than", required=True, type=Duration(models.RANGES["age"]),
              help="Only jobs last updated longer ago than this: 7d, 12h, 30m.")
def purge(states, older_than):
    """Delete finished jobs and their attempts (dependencies they satisfied stay satisfied).

    \b
    Example:
      queuectl purge --state completed --state cancelled --older-than 7d
    """
    count = get_queue().purge(states, older_than)
    click.echo(f"purged {count} job(s)")


@cli.group("queue")
def queue_group():
    """Named queues: concurrency limits across all workers and hosts, pause and resume.

    \b
    Examples:
      queuectl queue limit ci 1
      queuectl queue pause ci
    """


@queue_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def queue_list(as_json):
    """Queues with their limit, pause state and job counts.

    \b
    Example:
      queuectl queue list
    """
    rows = get_queue().queues()
    if as_json:
        emit_json(rows)
        return
    table(({**r, "concurrency": r["concurrency"] or "-", "paused": "yes" if r["paused"] else ""} for r in rows),
          ["name", "concurrency", "paused", "pending", "processing"])


class QueueLimit(Integer):
    """N or none (no limit), for `queue limit NAME N`."""

    name = "n|none"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() in ("none", "unlimited"):
            return None
        try:
            return self.limit.check(value)
        except ValueError:
            self.fail(f"must be {self.limit.describe()} or none, got {models.shown(value)}", param, ctx)


# ignore_unknown_options: `queue limit ci -1` is a bad N, not an unknown option "-1"
@queue_group.command("limit", context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=complete_queues)
@click.argument("limit", metavar="N|none", type=QueueLimit(models.RANGES["concurrency"]))
def queue_limit(name, limit):
    """At most N jobs of queue NAME run at once, across all pools ('none' removes the limit).

    \b
    Example:
      queuectl queue limit ci 2
    """
    row = get_queue().set_queue(name, concurrency=limit)
    click.echo(f"{name}: limit {row['concurrency'] or 'none'}")


@queue_group.command("pause")
@click.argument("name", shell_complete=complete_queues)
def queue_pause(name):
    """Start nothing new from queue NAME; running jobs finish.

    \b
    Example:
      queuectl queue pause ci
    """
    get_queue().set_queue(name, paused=True)
    click.echo(f"{name}: paused")


@queue_group.command("resume")
@click.argument("name", shell_complete=complete_queues)
def queue_resume(name):
    """Let queue NAME run again.

    \b
    Example:
      queuectl queue resume ci
    """
    get_queue().set_queue(name, paused=False)
    click.echo(f"{name}: resumed")


class WorkerGroup(click.Group):
    command_class = QueuectlCommand
    context_class = QueuectlContext

    def get_command(self, ctx, name):
        if name == "start":     # plugins may add options to `worker start`
            cli._worker_options(ctx.find_root())
        return super().get_command(ctx, name)


@cli.group(cls=WorkerGroup)
def worker():
    """Run or stop worker pools.

    \b
    Examples:
      queuectl worker start --count 4
      queuectl worker stop
    """


@worker.command("start")
@click.option("-n", "--count", default=1, show_default=True, type=Integer(models.RANGES["workers"]),
              help="Worker processes in this pool.")
@click.option("--burst", is_flag=True, help="Exit 0 once nothing is runnable, processing or waiting for a retry.")
@click.option("-v", "--verbose", is_flag=True, help="Log every attempt to stderr, with timestamps.")
@click.option("--queue", "queues", metavar="NAME[,NAME...]", shell_complete=complete_queues,
              help="Only run jobs of these queues (default: all).")
def worker_start(count, burst, verbose, queues, **options):
    """Start a pool of COUNT workers in the foreground, until stopped.

    SIGTERM, SIGINT (Ctrl-C) or `queuectl worker stop`: running jobs finish, then the pool exits 0.
    A second signal stops the running commands and records them as interrupted, to be retried.

    \b
    Examples:
      queuectl worker start --count 4 -v
      queuectl worker start --burst          # run what is there, then exit
      queuectl worker start --queue ci,deploy
    """
    from .worker import Pool

    queue = get_queue()
    try:
        names = None if queues is None else models.comma_list(queues, "--queue")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name in names or ():
        if not models.QUEUE_PATTERN.match(name):
            raise UsageError(f"queue name {name!r} is not valid")
    sys.exit(Pool(queue, count, burst=burst, verbose=verbose, options=options, queues=names).run())


@worker.command("stop")
def worker_stop():
    """Ask every running pool that shares this store to finish its jobs and exit.

    \b
    Example:
      queuectl worker stop
    """
    count = get_queue().request_stop()
    click.echo(f"stop requested for {count} pool(s)" if count else "no pool is running")


@cli.command()
@click.argument("job_id", shell_complete=complete_job_ids)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(job_id, as_json):
    """One job with all its attempts and its edit history.

    \b
    Example:
      queuectl show 3f2a
    """
    queue = get_queue()
    job = queue.get(job_id)
    attempts = queue.attempts(job.id)
    if as_json:
        emit_json(dict(job.to_dict(), history=[a.to_dict() for a in attempts]))
        return
    for key, value in _show_fields(job):
        echo(f"{key + ':':14} {value}")
    for edit in job.edits:
        before = ", ".join(f"{k} was {json.dumps(v)}" for k, v in edit["before"].items()) or "no change"
        echo(for_terminal(f"{'edited:':14} {when(_epoch(edit['at']), exact=True)}: {before}"))
    if attempts:
        click.echo("")
        table(({"attempt": a.attempt, "outcome": a.outcome, "exit": a.exit_code if a.signal is None else
                f"signal {a.signal}", "duration": fmt_seconds(a.duration), "started": when(a.started_at),
                "error": a.error} for a in attempts),
              ["attempt", "outcome", "exit", "duration", "started", "error"], styles={"outcome": _outcome_style})


TIME_FIELDS = ("created_at", "updated_at", "run_at")


def _show_fields(job):
    """(name, text) of each field that has a value: times local and relative on a terminal, texts escaped."""
    data = job.to_dict()
    data["attempts"] = attempts_text(job)
    for key, value in data.items():
        if value in (None, {}, "", []) or key == "edits":
            continue
        if key in TIME_FIELDS:
            text = when(getattr(job, key), exact=True)
        elif key == "state":
            text = state_text(value)
        elif key == "labels":
            text = labels_text(value)
        elif key == "worker":
            text = f"pid {value['pid']} on {value['host']}, started {when(_epoch(value['started_at']))}"
        else:
            text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        yield key, text if key == "state" else for_terminal(text)


def _outcome_style(outcome: str) -> str:
    return "32" if outcome == models.SUCCEEDED else "2" if outcome == models.INTERRUPTED else "31"


@cli.command()
@click.argument("job_id", shell_complete=complete_job_ids)
@click.option("--attempt", type=Integer(models.RANGES["attempt"]), help="Only this attempt (from 1).")
@click.option("-f", "--follow", is_flag=True, help="Stream the output as it is produced, across retries, until "
              "the job is terminal; exit like `wait`.")
@click.option("--stdout", "only_stdout", is_flag=True, help="Only the job's stdout.")
@click.option("--stderr", "only_stderr", is_flag=True, help="Only the job's stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--raw", is_flag=True, help="On a terminal too, print output exactly as stored (escapes act).")
def logs(job_id, attempt, follow, only_stdout, only_stderr, as_json, raw):
    """Output, exit code, duration and time of each attempt of a job (the running one so far).

    \b
    Examples:
      queuectl logs 3f2a
      queuectl logs 3f2a --attempt 2 > attempt2.txt
      queuectl logs -f 3f2a
    """
    if only_stdout and only_stderr:
        raise UsageError("give --stdout or --stderr (one stream), or neither for both")
    only = "stdout" if only_stdout else "stderr" if only_stderr else None
    if follow:
        if as_json or attempt is not None:
            raise UsageError("--follow cannot be combined with --json or --attempt")
        raise click.exceptions.Exit(follow_logs(get_queue(), job_id, only, raw))
    queue = get_queue()
    entries = queue.logs(job_id, attempt)
    if as_json:
        emit_json(entries)
        return
    asked_running = attempt is not None and entries[0].get("running")      # `--attempt N` of the running one
    stored = {} if asked_running else {a.attempt: a for a in queue.attempts(job_id, attempt)}   # finished, bytes
    for entry in entries:
        echo(for_terminal(attempt_header(entry), raw=raw))
        # piped: the stored bytes exactly, of a finished attempt and of the running one's output so far
        data = _output_bytes(queue, entry, stored.get(entry["attempt"]))
        for stream in (only,) if only else ("stdout", "stderr"):
            if entry[stream]:
                click.echo(f"--- {stream}")
                if data is not None:
                    write_output(data[stream], raw=raw)
                else:
                    echo(for_terminal(entry[stream].rstrip("\n"), raw=raw))


def _output_bytes(queue, entry: dict, record) -> Optional[dict]:
    """An attempt's stdout and stderr as bytes: from its record once finished, else its live output so far."""
    if entry.get("running"):
        from .output import live_bytes

        return live_bytes(queue, entry["job_id"], entry["attempt"])
    return None if record is None else {name: getattr(record, name) for name in ("stdout", "stderr")}


def attempt_header(entry: dict, stream=None) -> str:
    """``=== attempt N: ...``: how it ended, or that it is still running (for ``stream``, stdout by default)."""
    started = when(_epoch(entry["created_at"]), stream)      # relative on a terminal, ISO-8601 UTC elsewhere
    if entry.get("running"):
        return (f"=== attempt {entry['attempt']}: running since {started} "
                f"({fmt_seconds(entry['duration'])} so far) on {entry['host']}")
    how = (f" (signal {entry['signal']})" if entry["signal"] is not None else
           f" (exit {entry['exit_code']})" if entry["exit_code"] is not None else "")    # never ran, or worker lost
    error = f": {for_terminal(entry['error'], stream)}" if entry["error"] else ""
    return (f"=== attempt {entry['attempt']}: {entry['outcome']}{how} in {fmt_seconds(entry['duration'])}, "
            f"started {started}{error}")


def follow_logs(queue, job_id: str, only: Optional[str], raw: bool = False) -> int:
    """``logs --follow``: job output to stdout (its stderr to stderr, unless one stream is picked), exactly
    as printed when piped or with ``raw``; a header line per attempt on stderr. Returns the exit code,
    like `wait` (a job purged while followed: 3)."""
    sinks = {name: OutputWriter(sys.stdout if only or name == "stdout" else sys.stderr, raw)
             for name in ("stdout", "stderr")}
    try:
        for event in queue.follow(job_id):
            kind = event[0]
            if kind == "attempt":
                click.echo(f"=== attempt {event[1]}" + (" (running)" if event[2] is None else ""), err=True)
            elif kind == "output" and only in (None, event[1]):
                sinks[event[1]].write(event[2])
            elif kind == "ended" and event[2] is not None:
                click.echo(attempt_header(event[2], sys.stderr), err=True)
            elif kind == "done":
                click.echo(f"=== job {event[1].id} is {event[1].state}", err=True)
                return exit_for_states([event[1].state])
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


class OutputWriter:
    """Job output as it came when piped (or ``raw``); decoded (a character split between chunks kept
    whole) and escaped on a terminal."""

    def __init__(self, stream, raw: bool = False):
        import codecs

        self.stream, self.raw = stream, raw
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> None:
        if self.stream.isatty() and not self.raw:
            self.stream.write(for_terminal(self.decoder.decode(data), self.stream))
        else:
            self.stream.flush()
            self.stream.buffer.write(data)
        self.stream.flush()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(as_json):
    """Runs, failures, durations and throughput.

    \b
    Example:
      queuectl stats --json
    """
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
    """Read and change settings (stored settings reach running workers without a restart).

    \b
    Examples:
      queuectl config set max-retries 5
      queuectl config list
    """


@config_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
def config_set(key, value):
    """Store a setting in the store, for every worker and command that uses it.

    \b
    Example:
      queuectl config set backoff-base 3
    """
    from .config import HIDDEN

    queue = get_queue()
    parsed = queue.config_set(key, value)
    setting = queue.config.settings.get(key.replace("_", "-"))
    shown = HIDDEN if setting is not None and setting.secret else json.dumps(parsed)
    click.echo(f"{key} = {shown}")


@config_group.command("unset")
@click.argument("key")
def config_unset(key):
    """Remove a stored setting (config.yaml or the default applies again).

    \b
    Example:
      queuectl config unset backoff-base
    """
    removed = get_queue().config_unset(key)
    click.echo(f"{key}: {'removed from the store' if removed else 'was not set in the store'}")


@config_group.command("get")
@click.argument("key")
def config_get(key):
    """Print a setting's value.

    \b
    Example:
      queuectl config get lease-timeout
    """
    value, _source = get_queue().config.lookup(key)
    click.echo(json.dumps(value) if not isinstance(value, str) else value)


@config_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_list(as_json):
    """Every setting, its value and where the value comes from.

    \b
    Example:
      queuectl config list --json
    """
    rows = get_queue().config.items()
    if as_json:
        emit_json(rows)
        return
    table(({"key": r["key"], "value": json.dumps(r["value"]), "source": r["source"], "plugin": r["plugin"]}
           for r in rows), ["key", "value", "source", "plugin"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins(as_json):
    """Loaded plugins and the hooks each implements.

    \b
    Example:
      queuectl plugins --json
    """
    from .plugins import describe

    data = describe(get_queue().pm)
    if as_json:
        emit_json(data)
        return
    for entry in data:
        click.echo(f"{entry['name']} ({entry['origin']})")
        for hook in entry["hooks"]:
            click.echo(f"  {hook}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script (commands, options, job ids, states, queues, schedules).

    \b
    Examples:
      eval "$(queuectl completion bash)"        # in ~/.bashrc
      eval "$(queuectl completion zsh)"         # in ~/.zshrc
      queuectl completion fish > ~/.config/fish/completions/queuectl.fish
    """
    from click.shell_completion import get_completion_class

    script = get_completion_class(shell)(cli, {}, "queuectl", "_QUEUECTL_COMPLETE").source()
    click.echo(script)


# Commands that only read never create a store (see cli.py).
for _read in (show, logs, stats, queue_list, config_get, config_list):
    read_command(_read)
