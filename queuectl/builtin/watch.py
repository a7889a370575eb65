"""The built-in ``watch`` plugin: ``queuectl wait`` (block until jobs are terminal) and ``queuectl top``.

Both read everything through the Queue facade, so they work from any machine that shares a
PostgreSQL queue. ``top`` draws with rich, imported only by that command.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import click

from queuectl import hookimpl, models, output
from queuectl.command import (EXIT_TIMEOUT, Duration, QueueError, UsageError, complete_job_ids, complete_queues,
                              exit_for_states, get_queue, read_command)
from queuectl.term import escape_controls

WAIT_POLL = 0.25            # seconds between looks at the jobs being waited for, at least
WAIT_SHARE = 0.1            # at most this share of the time goes to looking (a look at 20,000 jobs takes 0.1 s)
BY_ID = 20                  # up to this many jobs are looked up one by one; more, by listing unfinished ones
UNFINISHED = (models.PENDING, models.PROCESSING, models.FAILED)
TOP_REFRESH = 1.0


@hookimpl
def queuectl_register_commands(cli):
    cli.add_command(read_command(wait))      # reads only: a mistyped --db is an error, not a new store
    cli.add_command(read_command(top))


# --- wait ------------------------------------------------------------------------------------------


@click.command()
@click.argument("job_ids", nargs=-1, shell_complete=complete_job_ids)
@click.option("--queue", "queue_name", metavar="NAME", shell_complete=complete_queues,
              help="Every job of this queue not finished yet.")
@click.option("--all", "everything", is_flag=True, help="Every job not finished yet.")
@click.option("--timeout", type=Duration(), help="Give up after this long: 90, 30s, 10m, 1h (exit 4).")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs' final states as JSON.")
def wait(job_ids, queue_name, everything, timeout, as_json):
    """Block until the jobs are completed, dead or cancelled (a job waiting for a retry is not).

    Exit 0 if all completed, 3 if any ended dead or cancelled, 4 on --timeout, 130 on Ctrl-C.

    \b
    Examples:
      queuectl wait 3f2a 9c1e
      queuectl wait --queue nightly --timeout 2h
      queuectl wait --all --json
    """
    limit = timeout
    queue = get_queue()
    targets = _targets(queue, job_ids, queue_name, everything)
    waiter = Waiter(queue, targets, queue_name)
    view = ProgressBar(len(targets)) if sys.stdout.isatty() and not as_json else PlainLines(as_json)
    deadline = None if limit is None else time.monotonic() + limit
    try:
        while True:
            began = time.monotonic()
            for job in waiter.poll():
                view.finished(job)
            pause = max(WAIT_POLL, (time.monotonic() - began) * (1 / WAIT_SHARE - 1))
            view.update(waiter)
            if not waiter.remaining:
                break
            if deadline is not None and time.monotonic() >= deadline:
                view.close(waiter, timed_out=True)
                raise click.exceptions.Exit(EXIT_TIMEOUT)
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
    except KeyboardInterrupt:
        view.close(waiter, timed_out=False)
        raise click.exceptions.Exit(130) from None
    view.close(waiter, timed_out=False)
    raise click.exceptions.Exit(exit_for_states(waiter.states.values()))


def _targets(queue, job_ids, queue_name: Optional[str], everything: bool) -> list[str]:
    """The ids to wait for: those given (each must exist), or the unfinished jobs of a queue or of all."""
    if bool(job_ids) + bool(queue_name) + everything != 1:
        raise UsageError("give job ids, --queue NAME or --all (one of them)")
    if job_ids:       # each resolved once (an unknown id: one error line, exit 1; an ambiguous prefix: 2)
        return list(dict.fromkeys(queue.get(job_id).id for job_id in job_ids))
    found = [j.id for j in unfinished_jobs(queue, queue_name)]
    if not found:
        where = f" in queue {queue_name!r}" if queue_name else ""
        click.echo(f"queuectl: nothing to wait for: no unfinished job{where}", err=True)
    return found


def unfinished_jobs(queue, queue_name: Optional[str] = None) -> list:
    """Jobs not finished yet, of one queue (a name the store checks) or of all."""
    return [job for state in UNFINISHED for job in queue.list(state=state, queue=queue_name)]


class Waiter:
    """Which of the target jobs are finished; few are looked up by id, many by listing the unfinished
    (of ``queue_name`` alone when the targets are that queue's)."""

    def __init__(self, queue, targets: list[str], queue_name: Optional[str] = None):
        self.queue, self.queue_name = queue, queue_name
        self.total = len(targets)
        self.remaining = dict.fromkeys(targets)
        self.states: dict[str, str] = {}
        self.started = time.monotonic()

    def poll(self) -> list:
        """The jobs that finished since the last poll (a job purged meanwhile finished as ``purged``)."""
        candidates = list(self.remaining)
        if len(candidates) > BY_ID:
            unfinished = {job.id for job in unfinished_jobs(self.queue, self.queue_name)}
            candidates = [job_id for job_id in candidates if job_id not in unfinished]
        done = []
        for job_id in candidates:
            job = output.current(self.queue, job_id)
            if job.state not in UNFINISHED:
                self.remaining.pop(job_id)
                self.states[job_id] = job.state
                done.append(job)
        return done

    @property
    def done(self) -> int:
        return self.total - len(self.remaining)

    def rate(self) -> Optional[float]:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if self.done and elapsed > 0 else None


class PlainLines:
    """Piped: one line per finished job (id, state, last error); or JSON at the end."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def finished(self, job) -> None:
        if not self.as_json:
            error = f"  {job.last_error}" if job.state != models.COMPLETED and job.last_error else ""
            click.echo(f"{job.id}  {job.state}{error}")

    def update(self, waiter) -> None:
        pass

    def close(self, waiter, timed_out: bool) -> None:
        if self.as_json:
            click.echo(json.dumps({"done": waiter.states, "waiting": list(waiter.remaining),
                                   "timed_out": timed_out}, indent=2))
        elif timed_out:
            click.echo(f"queuectl: timed out; {len(waiter.remaining)} job(s) not finished", err=True)


class ProgressBar:
    """On a terminal: done/total, rate and ETA on one line redrawn in place; failures printed above it."""

    def __init__(self, total: int):
        self.total = total
        self.drawn = False

    def finished(self, job) -> None:
        if job.state != models.COMPLETED:
            self._clear()
            click.echo(escape_controls(f"{job.id}  {job.state}  {job.last_error or ''}".rstrip()))

    def update(self, waiter) -> None:
        width = terminal_width()
        rate = waiter.rate()
        eta = len(waiter.remaining) / rate if rate and waiter.remaining else None
        right = f" {waiter.done}/{waiter.total}  {rate or 0:.1f}/s  ETA {fmt_eta(eta)}"
        bar = max(10, width - len(right) - 3)
        filled = bar * waiter.done // max(1, waiter.total)
        sys.stdout.write("\r[" + "#" * filled + "." * (bar - filled) + "]" + right[:width - bar - 3] + "\x1b[K")
        sys.stdout.flush()
        self.drawn = True

    def _clear(self) -> None:
        if self.drawn:
            sys.stdout.write("\r\x1b[K")
            self.drawn = False

    def close(self, waiter, timed_out: bool) -> None:
        self._clear()
        failed = sum(1 for state in waiter.states.values() if state != models.COMPLETED)
        summary = f"{waiter.done}/{waiter.total} finished, {failed} not completed"
        click.echo(summary + (f"; timed out with {len(waiter.remaining)} waiting" if timed_out else ""))


def terminal_width() -> int:
    """The terminal's columns now (a resize counts; an exported COLUMNS, which a resize leaves stale, does not)."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


def fmt_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# --- top -------------------------------------------------------------------------------------------


@click.command()
@click.option("--interval", default=TOP_REFRESH, type=Duration(models.Range(0.1, models.MAX_INTERVAL)),
              show_default=True,
              help="Time between refreshes: 0.5, 2s, 1m.")
def top(interval):
    """A live view of the queue: jobs per state and queue, throughput, workers, latest failures (q quits).

    \b
    Example:
      queuectl top --interval 2s
    """
    try:
        from queuectl.builtin import top_view
    except ImportError:
        raise QueueError("queuectl top needs the rich library: pip install rich") from None
    if not sys.stdout.isatty():
        raise UsageError("queuectl top needs a terminal (use `status --json` in scripts)")
    raise click.exceptions.Exit(top_view.run(get_queue(), interval))
