"""The surface for commands, the core's and plugins' alike: a plugin that adds commands through
``queuectl_register_commands`` uses these, never ``queuectl.cli``.

- ``get_queue()``: the Queue of the current invocation (opened on first use, with the global
  ``--config``/``--db``/``--plugins-dir`` the user gave).
- ``emit_json(data)``, ``table(rows, columns)``, ``render_jobs(jobs, as_json)``: output the way the
  core commands print it.
- ``job_options`` and ``spec_from_options(options)``: the options that describe a job, as
  ``enqueue`` has them, and the job fields they give.
- ``Duration``, ``Integer``, ``Number`` (and ``DURATION``): click option types bounded by a
  ``models.Range``, shown as DURATION / INTEGER / NUMBER; ``Duration`` takes 90, 10m or 1h30m.
- ``UsageError`` (exit 2) and ``QueueError`` (exit 1): raise them for one error line.

These names are the stable contract described in docs/hooks.md; anything else may change.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional

import click

from . import models
from .errors import QueueError, UsageError

__all__ = ["get_queue", "emit_json", "table", "render_jobs", "short", "fmt_seconds", "job_options",
           "spec_from_options", "integer_flag", "Duration", "Integer", "Number", "DURATION", "UsageError",
           "QueueError", "EXIT_NOT_COMPLETED", "EXIT_TIMEOUT", "exit_for_states"]


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
        return self._queue


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


def table(rows: Iterable[dict], columns: list[str]) -> None:
    rows = [{c: "" if r.get(c) is None else str(r.get(c)) for c in columns} for r in rows]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


def short(text: Optional[str], width: int = 48) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def render_jobs(jobs, as_json: bool) -> None:
    if as_json:
        emit_json([job.to_dict() for job in jobs])
        return
    now = models.now()
    later = any(j.run_at > now and j.state in models.RUNNABLE_STATES for j in jobs)
    columns = ["id", "state", "attempts", "max_retries", "updated"] + (["runnable_at"] if later else []) + \
        ["command", "last_error"]
    table(({"id": j.id, "state": j.state, "attempts": j.attempts, "max_retries": j.max_retries,
            "updated": models.iso(j.updated_at), "command": short(j.command), "last_error": short(j.last_error, 40),
            "runnable_at": models.iso(j.run_at) if j.state in models.RUNNABLE_STATES else None}
           for j in jobs), columns)


def fmt_seconds(value: Optional[float]) -> str:
    value = models.finite(value)
    return "-" if value is None else f"{value:.3f}s"


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
    click.option("-c", "--command", "command", help="Shell command to run."),
    click.option("--id", "id", help="Job id (default: generated)."),
    click.option("--max-retries", "max_retries", type=Integer(models.RANGES["max_retries"]),
                 help="Retries after the first attempt (0-1000)."),
    click.option("--timeout", type=Duration(models.RANGES["timeout"]),
                 help="Time before the job is stopped and counted as failed: 90, 10m, 1h30m."),
    click.option("--cwd", help="Working folder (default: the current one)."),
    click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable)."),
    click.option("--executor", help="Executor plugin to run the job with (default: shell)."),
    click.option("--priority", type=Integer(models.RANGES["priority"]),
                 help="Higher runs first (-100..100, default 0)."),
    click.option("--queue", "queue", help="Queue name (default: default)."),
    click.option("--delay", type=DURATION, help="Run no earlier than this from now: 90, 30s, 10m, 2h, 1d."),
    click.option("--run-at", "run_at", help="Run no earlier than this time: 2026-12-01T02:00:00Z."),
    click.option("--after", help="Run after these jobs complete: ID[,ID...]."),
    click.option("--unique-key", "unique_key", help="While a job with this key is pending, failed or processing, "
                 "enqueueing returns its id instead."),
    click.option("--backoff-base", "backoff_base", type=Number(models.RANGES["backoff_base"]),
                 help="This job's backoff base (1-1000)."),
    click.option("--retry-on", "retry_on", help="Exit codes that are retried (others go to the DLQ): 75,69."),
    click.option("--dead-on", "dead_on", help="Exit codes that go to the DLQ at once: 64."),
)


def job_options(func):
    """The options that describe a job, shared by `enqueue` and plugins such as `schedule add`."""
    for option in reversed(JOB_OPTIONS):
        func = option(func)
    return func


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
    return spec
