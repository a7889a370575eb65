"""What ``queuectl top`` draws, with rich (this module is imported only by that command).

Everything shown comes from the Queue facade; text from jobs is escaped and never read as
rich markup. The view fits the terminal: rows are cut to its height, columns to its width.
"""
from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from queuectl import models
from queuectl.term import escape_controls


def snapshot(queue) -> dict:
    """One consistent-enough look at the queue: a handful of indexed reads."""
    workers = [w for w in queue.workers() if w["kind"] == "worker"]
    for worker in workers:
        worker["job"] = _job(queue, worker.get("job_id"))
    return {"counts": queue.counts(), "queues": queue.queues(), "stats": queue.stats(), "workers": workers,
            "failures": queue.latest_failures(5), "store": queue.store.describe().get("location", ""),
            "at": models.now()}


def _job(queue, job_id):
    if not job_id:
        return None
    try:
        return queue.get(job_id)
    except Exception:
        return None                       # finished and purged between the two reads


def _text(value) -> Text:
    return Text(escape_controls("" if value is None else str(value)), no_wrap=True, overflow="ellipsis")


def _elapsed(seconds) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _table(title: str, columns: list[str], rows: list[list], limit: int, more: int) -> Table:
    table = Table(title=Text(title + (f" (+{more} more)" if more > 0 else ""), style="bold"), title_justify="left",
                  box=None, padding=(0, 1), show_edge=False, expand=True, pad_edge=False)
    for i, name in enumerate(columns):
        table.add_column(name, no_wrap=True, overflow="ellipsis", ratio=3 if name in ("COMMAND", "ERROR") else None)
    for row in rows[:limit]:
        table.add_row(*[_text(cell) for cell in row])
    return table


def render(data: dict, height: int, width: int = 80):
    counts, stats = data["counts"], data["stats"]
    rate = stats.get("throughput_1m")
    title = Text.assemble(("queuectl top", "bold"), f"  {models.iso(data['at'])[11:19]}  q quits  ",
                          f"last minute: {'-' if rate is None else f'{rate:.2f}'} runs/s  ", _text(data["store"]),
                          no_wrap=True, overflow="ellipsis")
    line = "  ".join(f"{state} {counts.get(state, 0)}" for state in models.STATES)
    states = Text(line)                    # wraps on a narrow terminal: no count is ever cut off
    room = max(3, height - 2 - -(-len(line) // max(1, width)) - 6)   # title, states, a spare line; tables
    n_queues = min(len(data["queues"]), max(1, room // 4))
    n_failures = min(len(data["failures"]), max(1, room // 3))
    n_workers = max(1, room - n_queues - n_failures)
    now = data["at"]
    queues = [[q["name"], q["pending"], q["processing"], "-" if q["concurrency"] is None else q["concurrency"],
               "yes" if q["paused"] else ""] for q in data["queues"]]
    workers = [[w["id"], w["host"], w["pid"], w["job"].id if w["job"] else "idle",
                _elapsed(now - (w["job"].lease.started_at or now)) if w["job"] and w["job"].lease else "",
                w["job"].command if w["job"] else ""] for w in data["workers"]]
    failures = [[j.id, j.state, j.attempts, models.iso(j.updated_at)[11:19], j.last_error or ""]
                for j in data["failures"]]
    return Group(title, states,
                 _table("queues", ["QUEUE", "PENDING", "RUNNING", "LIMIT", "PAUSED"], queues, n_queues,
                        len(queues) - n_queues),
                 _table("workers", ["WORKER", "HOST", "PID", "JOB", "ELAPSED", "COMMAND"], workers, n_workers,
                        len(workers) - n_workers),
                 _table("latest failures", ["JOB", "STATE", "RUNS", "AT", "ERROR"], failures, n_failures, 0))


def run(queue, interval: float) -> int:
    """Redraw every ``interval`` seconds until q (exit 0) or Ctrl-C (exit 130)."""
    for name in ("COLUMNS", "LINES"):     # exported, rich would take them over the terminal's size and its resizes
        os.environ.pop(name, None)
    console = Console()
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        if saved is not None:
            tty.setcbreak(stdin)               # keys arrive one by one; Ctrl-C still sends SIGINT
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                live.update(render(snapshot(queue), console.size.height, console.size.width), refresh=True)
                if _quit_pressed(stdin, interval):
                    return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _quit_pressed(stdin: int, interval: float) -> bool:
    """True once q is pressed within ``interval``; keys are read only from a terminal (from
    anything else, /dev/null at its end say, only Ctrl-C stops the view)."""
    deadline = time.monotonic() + interval
    if not os.isatty(stdin):
        time.sleep(interval)
        return False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if select.select([stdin], [], [], left)[0]:
            key = os.read(stdin, 32)
            if not key or b"q" in key.lower():
                return True
