"""Where a worker's CPU goes per `true` job: its thread CPU time (user and kernel) split by phase.

    python -m benchmarks.worker_phases [JOBS]

Enqueues JOBS (default 3,000) `true` jobs into a fresh SQLite store in a temporary folder and runs one
burst Worker in this process (no pool around it), with the worker's, store's and shell executor's
steps wrapped to add up ``time.thread_time_ns`` per call. Thread CPU time counts what the worker's
own thread spends, system calls included, and none of the time it waits (for its command, or for
the CPU on a loaded machine), so the split moves much less with the load than wall time does. Each
wrapper adds about a microsecond per call. Rows are inclusive (``Worker.process`` holds all the
others; ``record`` holds ``SQLiteStore.finish``), in microseconds per job.

What it showed first (2026-12-03, see BENCHMARKS.md): the steps cost three to eight times what the
same calls cost in a loop of their own, since every job's command (exec of /bin/sh on the other
core, the worker idle meanwhile) leaves the worker's caches cold.
"""
from __future__ import annotations

import collections
import functools
import os
import sys
import tempfile
import time

from queuectl import Queue, watchdog
from queuectl import worker as worker_module
from queuectl.builtin import shell, sqlite_store

STEPS = [
    (worker_module.Worker, "process"), (worker_module, "record"), (sqlite_store.SQLiteStore, "finish"),
    (worker_module.Worker, "_execute"), (shell.ProcessExecutor, "start"), (shell, "spawn"), (shell, "_spawn"),
    (shell, "environment"), (shell.ShellRun, "__init__"), (worker_module.Worker, "_watch"),
    (shell.ShellRun, "wait"), (shell.ShellRun, "_collect"), (watchdog.Board, "watch"),
    (worker_module.Priority, "_set"), (worker_module, "decide"), (worker_module, "live_output_sink"),
    (worker_module.Worker, "_still_ours"),
]


def instrument(spent: collections.Counter, calls: collections.Counter) -> None:
    clock = time.thread_time_ns

    def wrap(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            began = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[label] += clock() - began
                calls[label] += 1
        setattr(owner, name, timed)

    for owner, name in STEPS:
        wrap(owner, name, f"{getattr(owner, '__name__', owner).rsplit('.', 1)[-1]}.{name}")
    report = Queue.report

    def timed_report(self, hook, **kwargs):
        began = clock()
        try:
            return report(self, hook, **kwargs)
        finally:
            spent[f"report {hook}"] += clock() - began
            calls[f"report {hook}"] += 1
    Queue.report = timed_report


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    folder = tempfile.mkdtemp(prefix="queuectl-phases-")
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as fh:
        fh.write(f"db: {folder}/queue.db\n")
    queue = Queue.open(config=config)
    queue.enqueue_many([{"command": "true"}] * jobs)
    queue.close()
    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    instrument(spent, calls)
    queue = Queue.open(config=config)
    worker = worker_module.Worker(queue, burst=True)
    worker.install_signals()
    began, cpu = time.perf_counter(), time.thread_time_ns()
    worker.run()
    wall, cpu = time.perf_counter() - began, time.thread_time_ns() - cpu
    done = queue.counts().get("completed", 0)
    queue.close()
    if done != jobs:
        raise SystemExit(f"only {done} of {jobs} jobs completed")
    print(f"{jobs} x `true`, one worker in this process: {jobs / wall:,.0f} jobs/s; "
          f"worker thread CPU {cpu / jobs / 1000:,.0f} us/job")
    for label, ns in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {ns / jobs / 1000:7.1f} us/job  {calls[label] / jobs:4.2f} calls/job  {label}")


if __name__ == "__main__":
    main()
