"""The surface for commands, the core's and plugins' alike: a plugin that adds commands through
``queuectl_register_commands`` uses these, never ``queuectl.cli``.

- ``get_queue()``: the Queue of the current invocation (opened on first use, with the global
  ``--config``/``--db``/``--plugins-dir`` the user gave).
- ``emit_json(data)``, ``table(rows, columns)``, ``render_jobs(jobs, as_json)``: output the way the
  core commands print it. On a terminal tables fit its width and states are in color; piped output
  is plain. ``when(ts)``, ``human_duration(s)``, ``state_text(state)`` and ``for_terminal(text)``
  (from ``queuectl.screen`` and ``queuectl.term``) render single values the same way.
- ``complete_job_ids``, ``complete_queues``, ``complete_schedules``: ``shell_complete=`` callbacks
  for arguments and options that take those (see ``queuectl completion``).
- ``job_options`` and ``spec_from_options(options)``: the options that describe a job, as
  ``enqueue`` has them, and the job fields they give.
- ``Duration``, ``Integer``, ``Number`` (and ``DURATION``): click option types bounded by a
  ``models.Range``, shown as DURATION / INTEGER / NUMBER; ``Duration`` takes 90, 10m or 1h30m.
- ``UsageError`` (exit 2) and ``QueueError`` (exit 1): raise them for one error line.

These names are the stable contract described in docs/hooks.md; anything else may change.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import click

from . import models
from .errors import QueueError, UsageError
from ._lazy import LazyImport
from .screen import format_table, human_duration, state_text, when
from .term import for_terminal

json = LazyImport("json", globals())

__all__ = ["get_queue", "read_command", "emit_json", "table", "render_jobs", "short", "fmt_seconds", "job_options",
           "spec_from_options", "integer_flag", "Duration", "Integer", "Number", "DURATION", "UsageError",
           "QueueError", "EXIT_NOT_COMPLETED", "EXIT_TIMEOUT", "exit_for_states",
           "echo", "when", "human_duration", "state_text", "for_terminal", "parse_since", "parse_pairs",
           "complete_job_ids", "complete_queues", "complete_schedules"]


#: Exit codes of commands that wait for jobs (`wait`, `logs --follow`), besides 0 (all completed).
EXIT_NOT_COMPLETED = 3      # a job ended dead or cancelled
EXIT_TIMEOUT = 4            # --timeout passed first


def exit_for_states(states) -> int:
    """0 when every job completed, else EXIT_NOT_COMPLETED."""
    return 0 if all(state == models.COMPLETED for state in states) else EXIT_NOT_COMPLETED


class App:
    """Per-invocation state: the global options and the lazily opened queue."""

    def __init__(self, config: Optional[str], db: Optional[str], plugins_dir: Optional[str]):
        self.options = {"config": config, "db": db, "plugins_dir": plugins_dir}
        self._queue = None

    @property
    def queue(self):
        if self._queue is None:
            from .queue import Queue

            self._queue = Queue.open(**self.options)
            root = click.get_current_context(silent=True)
            if root is not None:
                root.find_root().call_on_close(self._queue.close)
        # Decided by the command that uses the queue (plugin commands are resolved through it first).
        self._queue.create_store = not reads_only(click.get_current_context(silent=True))
        return self._queue


def reads_only(ctx) -> bool:
    """Does the running command only read? Such a command never creates a store (see ``read_command``)."""
    return bool(ctx is not None and getattr(ctx.command, "reads_only", False))


def read_command(command):
    """Mark a click command as one that only reads: on a missing store it fails instead of creating one
    (so a typo in --db is an error, not a new empty queue). Returns the command."""
    command.reads_only = True
    return command


pass_app = click.make_pass_decorator(App)


def get_queue():
    """The Queue of the command being run."""
    return click.get_current_context().find_object(App).queue


# --- rendering ------------------------------------------------------------------------------


def emit_json(data: Any) -> None:
    """Strict JSON (RFC 8259): never Infinity or NaN, which jq and browsers refuse; such a value,
    should one reach here despite the ranges, is printed as null."""
    try:
        text = json.dumps(data, indent=2, default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(data), indent=2, default=str, allow_nan=False)
    click.echo(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return models.finite(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def table(rows: Iterable[dict], columns: list[str], styles: Optional[dict] = None) -> None:
    """Rows of dicts as a table: fitted to the terminal's width (free texts cut with …) and states
    in color on a terminal; plain and whole-width in a pipe. See queuectl.screen."""
    lines = format_table(rows, columns, styles=styles)
    echo("\n".join(lines))


def echo(text: str) -> None:
    """A line to stdout, as it is: click would strip what looks like a color code from a pipe, but
    queuectl's own colors are only there when wanted (``use_color``), and a job's text piped stays exact."""
    click.echo(text, color=True)


def short(text: Optional[str], width: int = 48) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def attempts_text(job) -> str:
    """Runs so far / runs allowed (a DLQ retry grants a fresh budget on top of the runs already made)."""
    return f"{job.attempts}/{job.attempts - job.tries + job.max_retries + 1}"


def labels_text(labels: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def render_jobs(jobs, as_json: bool) -> None:
    jobs = list(jobs)
    if as_json:
        emit_json([job.to_dict() for job in jobs])
        return
    if not jobs:
        click.echo("no jobs")
        return
    now = models.now()
    later = any(j.run_at > now and j.state in models.RUNNABLE_STATES for j in jobs)
    columns = ["id", "state", "attempts"] + (["queue"] if any(j.queue != "default" for j in jobs) else []) + \
        (["labels"] if any(j.labels for j in jobs) else []) + ["updated"] + (["due"] if later else []) + \
        ["command", "error"]
    table(({"id": j.id, "state": j.state, "attempts": attempts_text(j), "queue": j.queue,
            "labels": labels_text(j.labels), "updated": when(j.updated_at), "command": j.command,
            "error": j.last_error,
            "due": when(j.run_at) if j.state in models.RUNNABLE_STATES and j.run_at > now else None}
           for j in jobs), columns)


def fmt_seconds(value: Optional[float]) -> str:
    return human_duration(models.finite(value))


def parse_since(value: Optional[str]) -> Optional[float]:
    """--since: a duration back from now (10m, 2h, 1d) or an ISO-8601 time with a zone, not in the future
    (nothing could match it: a wrong year or zone, said rather than answered with "no jobs")."""
    if value is None:
        return None
    now = models.now()
    try:
        return now - models.parse_duration(value)
    except ValueError:
        pass
    try:
        since = models.parse_time(value)
    except ValueError:
        raise UsageError(f"--since expects a duration (10m, 2h, 1d) or an ISO-8601 time "
                         f"(2026-12-01T02:00:00Z), got {value!r}") from None
    if since > now:
        raise UsageError(f"--since {value} is in the future (now is {models.iso(now)})")
    return since


def parse_pairs(option: str, pairs: Iterable[str], value_required: bool = True) -> dict:
    """KEY=VALUE pairs of a repeatable option (KEY alone, as None, where a value is optional)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            if value_required or not pair:
                raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}")
            out[pair] = None
            continue
        key, value = pair.split("=", 1)
        out[key] = value
    return out


# --- completion -------------------------------------------------------------------------------


def _completion_queue(ctx):
    """The queue while the shell asks for completions, or None when there is no store yet (none is made)."""
    import os

    root = ctx.find_root()
    app = root.find_object(App) or App(**{k: root.params.get(k) for k in ("config", "db", "plugins_dir")})
    try:
        queue = app.queue
        if "://" not in queue.db and not os.path.exists(queue.db):
            return None
        return queue
    except Exception:       # completion must never print a traceback into the user's shell
        return None


def _complete(ctx, fetch) -> list:
    queue = _completion_queue(ctx)
    if queue is None:
        return []
    try:
        return fetch(queue)
    except Exception:
        return []


def complete_job_ids(ctx, param, incomplete: str) -> list:
    """Ids starting with ``incomplete``; after a comma (``--after a1,b``) the last one is completed."""
    from click.shell_completion import CompletionItem

    head, comma, incomplete = incomplete.rpartition(",")     # no id or queue name holds a comma

    def fetch(queue):
        if incomplete:
            ids = queue.store.find_ids(incomplete, 50)
            return [CompletionItem(head + comma + i) for i in ids]
        return [CompletionItem(head + comma + j.id, help=f"{j.state}: {short(j.command, 40)}")
                for j in queue.list(last=50)]
    return _complete(ctx, fetch)


def complete_queues(ctx, param, incomplete: str) -> list:
    head, comma, incomplete = incomplete.rpartition(",")
    return _complete(ctx, lambda q: [head + comma + r["name"] for r in q.queues() if r["name"].startswith(incomplete)])


def complete_schedules(ctx, param, incomplete: str) -> list:
    return _complete(ctx, lambda q: [s["name"] for s in q.store.schedules() if s["name"].startswith(incomplete)])


def _parse_env(pairs: tuple) -> dict:
    env = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--env expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        env[key] = value
    return env


# --- option types: the ranges of models.RANGES, on the command line -----------------------------


class Duration(click.ParamType):
    """A span of time: 90, 30s, 10m, 1h30m, 1d, within ``limit`` (a models.Range of seconds)."""

    name = "duration"

    def __init__(self, limit: models.Range = models.RANGES["delay"]):
        self.limit = limit

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return self.limit.check(models.parse_duration(value, self.limit.high))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Integer(click.ParamType):
    """An integer within a models.Range (by default anything a 64-bit store column holds)."""

    name = "integer"

    def __init__(self, limit: models.Range = models.RANGES["count"]):
        self.limit = limit

    def convert(self, value, param, ctx):
        try:
            return self.limit.check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Number(Integer):
    """A finite number within a models.Range."""

    name = "number"


DURATION = Duration()


JOB_OPTIONS = (
    click.option("-c", "--command", "command", metavar="CMD", help="Shell command to run."),
    click.option("--id", "id", metavar="ID", help="Job id (default: generated)."),
    click.option("--max-retries", "max_retries", type=Integer(models.RANGES["max_retries"]),
                 help="Retries after the first attempt (0-1000)."),
    click.option("--timeout", type=Duration(models.RANGES["timeout"]),
                 help="Time before the job is stopped and counted as failed: 90, 10m, 1h30m."),
    click.option("--cwd", metavar="DIR", help="Working folder (default: the current one)."),
    click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable)."),
    click.option("--executor", metavar="NAME", help="Executor plugin to run the job with (default: shell)."),
    click.option("--priority", type=Integer(models.RANGES["priority"]),
                 help="Higher runs first (-100..100, default 0)."),
    click.option("--queue", "queue", metavar="NAME", shell_complete=complete_queues,
                 help="Queue name (default: default)."),
    click.option("--delay", type=DURATION, help="Run no earlier than this from now: 90, 30s, 10m, 2h, 1d."),
    click.option("--run-at", "run_at", metavar="TIME", help="Run no earlier than this time: 2026-12-01T02:00:00Z."),
    click.option("--after", metavar="ID[,ID...]", shell_complete=complete_job_ids,
                 help="Run after these jobs complete (ids or unique prefixes)."),
    click.option("--unique-key", "unique_key", metavar="KEY", help="While a job with this key is pending, failed or processing, "
                 "enqueueing returns its id instead."),
    click.option("--backoff-base", "backoff_base", type=Number(models.RANGES["backoff_base"]),
                 help="This job's backoff base (1-1000)."),
    click.option("--retry-on", "retry_on", metavar="CODE[,CODE...]", help="Exit codes that are retried (others go to the DLQ): 75,69."),
    click.option("--dead-on", "dead_on", metavar="CODE[,CODE...]", help="Exit codes that go to the DLQ at once: 64."),
    click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
                 help="A label, shown by `list` and filtered on with `list --label` (repeatable)."),
    click.option("--env-from-caller", "env_from_caller", is_flag=True, default=None,
                 help="Run with this shell's whole environment (secrets included: it is stored with the "
                      "job), plus any --env."),
)


def job_options(func=None, exclude: Iterable[str] = ()):
    """The options that describe a job, shared by `enqueue` and plugins such as `schedule add`.

    ``@job_options(exclude=("id", "run_at"))`` leaves out options a command does not take.
    """
    if func is None:
        return lambda f: _add_job_options(f, set(exclude))
    return _add_job_options(func, set(exclude))


def _add_job_options(func, exclude: set):
    for option in reversed(JOB_OPTIONS):
        if not exclude or _option_name(option) not in exclude:     # the probe builds an option: only if asked
            func = option(func)
    return func


def _option_name(decorator) -> str:
    """The parameter name a click.option decorator declares."""
    probe = decorator(lambda **kw: None)
    return probe.__click_params__[-1].name


def integer_flag(name: str, value: str, limit: models.Range = models.RANGES["count"]) -> int:
    """An integer option given as text, within ``limit``, or a UsageError naming the option."""
    try:
        return limit.check(value, f"--{name.replace('_', '-')}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def spec_from_options(options: dict) -> dict:
    """Job fields from the JOB_OPTIONS values that were given (the validator checks the rest)."""
    spec = {k: v for k, v in options.items() if v not in (None, ())}
    if "env" in spec:
        spec["env"] = _parse_env(spec["env"])
    if "labels" in spec:
        spec["labels"] = parse_pairs("--label", spec["labels"])
    if "after" in spec:
        try:
            spec["after"] = models.comma_list(spec["after"], "--after")    # prefixes: resolved by the command
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if spec.pop("env_from_caller", None):
        import os

        spec["env"] = dict(os.environ, **spec.get("env", {}))
    return spec
