"""Issue 11's cost figures for live output, on each backend: a job printing 100 MiB as fast as it can.

    python -m benchmarks.bench_live [--mib 100] [--backends sqlite,postgres] [--silent N]

One pool of one worker runs `head -c SIZE /dev/zero | tr '\\0' x` while `queuectl logs ID --follow`
reads it into /dev/null. Printed per backend: the worker's peak RSS (VmHWM from /proc, over its
life, a few warm-up jobs included), the stdout stored with the attempt (the cap: `output-cap`, 1 MiB,
plus the marker), the most live output the store held at once while the job ran (read from the
chunks table itself every 20 ms), the follower's peak RSS (wait4) and what it wrote, and the job's
run time. PostgreSQL is used when one is reachable at QUEUECTL_BENCH_PG_URL
(default postgresql://postgres@127.0.0.1:5432/test).

``--silent N`` also runs N `true` jobs through the shell executor in this process, with live output
on (the worker's sink for the store) and off, interleaved in blocks of 100, and prints the
executor's own CPU time per job each way: what live output adds to a job that prints nothing,
without the pool and the store around it (which `benchmarks/compare_drain.py` includes).
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .bench_follow import PG_URL, backends
from .common import Instance, proc_status, stop_process, wait_for

WARM_UP = 20


def worker_pid(inst: Instance, pool_pid: int) -> int:
    """The pool's one worker, once it has registered."""
    def ready():
        rows = [w for w in inst.queue.workers() if w["kind"] == "worker" and w["host"] and w["pid"] != pool_pid]
        return rows[0]["pid"] if rows else None
    return wait_for(ready, 60, "the worker to register")


def chunk_bytes(inst: Instance, job_id: str) -> int:
    """Bytes of live output the store holds for the job now (both streams), read from its table."""
    sql = "SELECT COALESCE(SUM(length(data)), 0) FROM {t} WHERE job_id = %s"
    if inst.config["db"].startswith("postgresql"):
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            table = f'"{inst.config["pg-schema"]}".output_chunks'
            return int(conn.execute(sql.format(t=table), (job_id,)).fetchone()[0])
    with sqlite3.connect(f"file:{inst.db}?mode=ro", uri=True) as conn:
        return conn.execute(sql.format(t="output_chunks").replace("%s", "?"), (job_id,)).fetchone()[0]


class Peak(threading.Thread):
    """Samples ``read()`` every 20 ms until stopped; keeps the largest value."""

    def __init__(self, read):
        super().__init__(daemon=True)
        self.read, self.peak, self.samples, self.done = read, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, self.read())
                self.samples += 1
            except Exception:
                pass            # a locked store for an instant: the next sample


def measure(inst: Instance, size: int) -> dict:
    pool = inst.popen("worker", "start", "--count", 1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = worker_pid(inst, pool.pid)
        queue = inst.queue
        for job_id in queue.enqueue_many([{"command": "echo warm-up"} for _ in range(WARM_UP)]):
            wait_for(lambda: queue.get(job_id).state == "completed", 60, "warm-up jobs")
        before = proc_status(pid)["VmHWM"]
        job_id = queue.enqueue(command=f"head -c {size} /dev/zero | tr '\\0' x", delay=1)
        follower = inst.popen("logs", job_id, "--follow", "--stdout", stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
        peak = Peak(lambda: chunk_bytes(inst, job_id))
        peak.start()
        written = 0
        for block in iter(lambda: follower.stdout.read(1 << 16), b""):
            written += len(block)
        _, status, usage = os.wait4(follower.pid, 0)
        follower.returncode = os.waitstatus_to_exitcode(status)
        peak.done.set()
        peak.join()
        job = queue.get(job_id)
        attempt = queue.attempts(job_id)[-1]
        return {"state": job.state, "follow_exit": follower.returncode, "worker_hwm_before": before,
                "worker_hwm": proc_status(pid)["VmHWM"], "stored_stdout": len(attempt.stdout),
                "live_peak": peak.peak, "samples": peak.samples, "follower_maxrss": usage.ru_maxrss * 1024,
                "followed_bytes": written, "job_seconds": attempt.duration}
    finally:
        stop_process(pool)


def silent_cost(inst: Instance, jobs: int) -> dict:
    """CPU seconds per `true` job of the shell executor in this process, with and without a live sink."""
    import uuid

    from queuectl import models, output
    from queuectl.builtin.shell import ShellExecutor
    from queuectl.executor import RunContext

    queue, executor = inst.queue, ShellExecutor()
    job = models.Job(id="silent", command="true")
    spent = {"on": 0.0, "off": 0.0}
    for block in range(2 * max(1, jobs // 100)):
        kind = ("on", "off")[block % 2] if block % 4 < 2 else ("off", "on")[block % 2]     # ABBA
        start = time.process_time()
        for _ in range(100):
            sink = output.live_output_sink(queue.store, job.id, 1) if kind == "on" else None
            run = executor.start(job, RunContext(1, uuid.uuid4().hex, {}, queue.config, output=sink))
            run.wait(60)
        spent[kind] += time.process_time() - start
    per_kind = max(1, jobs // 100) * 100
    return {kind: seconds / per_kind for kind, seconds in spent.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_live")
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--silent", type=int, default=0, help="also measure N `true` jobs, live output on and off")
    args = parser.parse_args(argv)
    for key in [k for k in os.environ if k.startswith("QUEUECTL_") and k != "QUEUECTL_BENCH_PG_URL"]:
        del os.environ[key]
    tmp = Path(tempfile.mkdtemp(prefix="queuectl-live-"))
    mib = 2 ** 20
    for name, config in backends(False):
        if name not in args.backends.split(","):
            continue
        inst = Instance(tmp / name, config)
        try:
            inst.run("init")
            if args.silent:
                cost = silent_cost(inst, args.silent)
                print(f"{name}: executor CPU per `true` job, live output on {cost['on'] * 1e6:.0f} us, "
                      f"off {cost['off'] * 1e6:.0f} us (on/off {cost['on'] / cost['off']:.3f})", flush=True)
            found = measure(inst, args.mib * mib)
        finally:
            inst.close()
            if config.get("pg-schema"):
                import psycopg

                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{config["pg-schema"]}" CASCADE')
        print(f"{name}: job printing {args.mib} MiB: {found['state']} in {found['job_seconds']:.2f} s; "
              f"worker peak RSS {found['worker_hwm'] / mib:.1f} MiB "
              f"(before the job {found['worker_hwm_before'] / mib:.1f}); "
              f"stored stdout {found['stored_stdout']:,} B; live output held at most {found['live_peak']:,} B "
              f"({found['samples']} samples); follower exit {found['follow_exit']}, peak RSS "
              f"{found['follower_maxrss'] / mib:.1f} MiB, wrote {found['followed_bytes']:,} B", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
