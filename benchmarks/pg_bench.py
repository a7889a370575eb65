#!/usr/bin/env python3
"""PostgreSQL next to SQLite: enqueue and drain throughput, scaling with workers, pickup latency.

    python benchmarks/pg_bench.py                     # everything, both backends
    python benchmarks/pg_bench.py --only drain --workers 1,4 --drain-jobs 1000
    python benchmarks/pg_bench.py --backends postgres --json results.json

Every measurement uses a fresh store: a temporary folder for SQLite, a private schema
(dropped afterwards) for PostgreSQL at --pg-url. Workers are real `queuectl worker start`
processes; jobs are the shell command `true`.

Measured:
  enqueue   one batch of --enqueue-jobs jobs through Queue.enqueue_many, the same through
            `queuectl enqueue --file` (process start included), and single-job enqueues
            (one transaction each) through the Python API
  drain     --drain-jobs jobs of `true` run by one pool of N workers (`worker start --count N
            --burst`): wall time from pool start to exit, and the store's own throughput
            (runs / (last finish - first start), which leaves out the pool's start-up)
  store     the store alone, no commands: N processes looping claim -> finish(claim_next)
  pickup    an idle worker (poll-interval 30 s, so only a wake-up can be fast) and a job
            enqueued through the Python API: enqueue to the job's first instruction
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from queuectl import Queue  # noqa: E402
from queuectl.models import Attempt  # noqa: E402
from queuectl.store import Transition, WorkerInfo  # noqa: E402

QUEUECTL = [sys.executable, "-m", "queuectl"]


class Bench:
    """A fresh store of one backend in a temporary folder."""

    def __init__(self, backend: str, pg_url: str, extra: dict | None = None):
        self.backend = backend
        self.pg_url = pg_url
        self.dir = Path(tempfile.mkdtemp(prefix=f"qbench-{backend}-"))
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        lines = {"db": pg_url, "pg-schema": self.schema} if backend == "postgres" else {"db": "queue.db"}
        lines.update(extra or {})
        self.config = self.dir / "config.yaml"
        self.config.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        self.env.update({"QUEUECTL_CONFIG": str(self.config), "XDG_DATA_HOME": str(self.dir / "xdg")})

    def open(self) -> Queue:
        return Queue.open(config=str(self.config), env={})

    def cli(self, *args, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*QUEUECTL, *map(str, args)], cwd=self.dir, env=self.env, check=True,
                              capture_output=True, text=True, **kw)

    def close(self) -> None:
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def specs(n: int, command: str = "true") -> list[dict]:
    return [{"command": command} for _ in range(n)]


# --- enqueue ----------------------------------------------------------------------------------


def bench_enqueue(backend: str, args) -> dict:
    n = args.enqueue_jobs
    out = {}
    b = Bench(backend, args.pg_url)
    try:
        with b.open() as q:
            q.store
            started = time.perf_counter()
            q.enqueue_many(specs(n))
            out["api_batch_jobs_per_s"] = n / (time.perf_counter() - started)
            singles = args.single_enqueues
            started = time.perf_counter()
            for _ in range(singles):
                q.enqueue(command="true")
            out["api_single_jobs_per_s"] = singles / (time.perf_counter() - started)
        jobs_file = b.dir / "jobs.jsonl"
        jobs_file.write_text("".join(json.dumps(s) + "\n" for s in specs(n)))
        started = time.perf_counter()
        b.cli("enqueue", "--file", jobs_file)
        out["cli_file_jobs_per_s"] = n / (time.perf_counter() - started)
    finally:
        b.close()
    return out


# --- drain ------------------------------------------------------------------------------------


def bench_drain(backend: str, workers: int, args) -> dict:
    n = args.drain_jobs
    b = Bench(backend, args.pg_url, {"poll-interval": 1.0})
    try:
        with b.open() as q:
            q.enqueue_many(specs(n))
        started = time.perf_counter()
        b.cli("worker", "start", "--count", workers, "--burst", timeout=1800)
        wall = time.perf_counter() - started
        with b.open() as q:
            counts, stats = q.counts(), q.stats()
        assert counts["completed"] == n, counts
        return {"wall_jobs_per_s": n / wall, "store_jobs_per_s": stats["throughput"], "wall_s": wall}
    finally:
        b.close()


# --- store alone ------------------------------------------------------------------------------


def _store_loop(config: str, index: int, ready, go, result) -> None:
    q = Queue.open(config=config, env={})
    store = q.store
    store.lock_timeout = None
    me = WorkerInfo(id=f"w-{index}", host="bench", pid=os.getpid(), pid_start=None)
    ready.set()
    go.wait()
    done = 0
    job = store.claim(me, 30)
    while job is not None:
        now = time.time()
        attempt = Attempt(job.id, job.attempts, "succeeded", now, now, exit_code=0)
        _, job = store.finish(job.id, job.lease.token, attempt, Transition("completed", now), claim_next=me)
        done += 1
    result.put(done)
    q.close()


def bench_store(backend: str, workers: int, args) -> dict:
    n = args.store_jobs
    b = Bench(backend, args.pg_url)
    try:
        with b.open() as q:
            q.enqueue_many(specs(n))
        ctx = multiprocessing.get_context("fork")
        go, result = ctx.Event(), ctx.Queue()
        readies = [ctx.Event() for _ in range(workers)]
        procs = [ctx.Process(target=_store_loop, args=(str(b.config), i, readies[i], go, result))
                 for i in range(workers)]
        for p in procs:
            p.start()
        for r in readies:
            r.wait(60)
        started = time.perf_counter()
        go.set()
        total = sum(result.get(timeout=600) for _ in procs)
        elapsed = time.perf_counter() - started
        for p in procs:
            p.join(60)
        assert total == n, (total, n)
        return {"cycles_per_s": n / elapsed}
    finally:
        b.close()


# --- pickup latency ---------------------------------------------------------------------------


def bench_pickup(backend: str, args) -> dict:
    b = Bench(backend, args.pg_url, {"poll-interval": 30})
    pool = None
    try:
        with b.open() as q:
            q.store
        pool = subprocess.Popen([*QUEUECTL, "worker", "start", "--count", "1"], cwd=b.dir, env=b.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        latencies = []
        with b.open() as q:
            q.store
            for i in range(args.pickup_samples + 1):
                marker = b.dir / f"started-{i}"
                time.sleep(0.3)                      # let the worker fall idle in select()
                sent = time.time()
                q.enqueue(command=f"date +%s.%N > {marker}")
                deadline = time.monotonic() + 40
                while not (marker.exists() and marker.read_text().strip()):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"job {i} did not start within 40 s")
                    time.sleep(0.002)
                if i:                                # the first one waits for the pool to start
                    latencies.append(float(marker.read_text()) - sent)
        latencies.sort()
        return {"median_ms": 1000 * statistics.median(latencies),
                "p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))],
                "max_ms": 1000 * latencies[-1], "samples": len(latencies)}
    finally:
        if pool is not None:
            pool.terminate()
            pool.wait(30)
        b.close()


# --- main -------------------------------------------------------------------------------------


def machine() -> str:
    try:
        import psycopg

        with psycopg.connect(ARGS.pg_url) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
    except Exception as exc:  # noqa: BLE001 - a report line, not a failure
        server, sync = f"unreachable ({exc})", "?"
    import sqlite3

    return (f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, "
            f"PostgreSQL {server} (synchronous_commit={sync})")


def main(argv=None) -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default=os.environ.get("QUEUECTL_BENCH_PG_URL",
                                                           "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--only", default="enqueue,drain,store,pickup",
                        help="comma-separated subset of: enqueue, drain, store, pickup")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts for drain and store")
    parser.add_argument("--enqueue-jobs", type=int, default=10000)
    parser.add_argument("--single-enqueues", type=int, default=500)
    parser.add_argument("--drain-jobs", type=int, default=2000)
    parser.add_argument("--store-jobs", type=int, default=5000)
    parser.add_argument("--pickup-samples", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each enqueue, drain and store measurement this many times and keep the best "
                             "(a shared machine only ever makes a run slower)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ARGS = args = parser.parse_args(argv)
    backends = [x for x in args.backends.split(",") if x]
    counts = [int(x) for x in args.workers.split(",") if x]
    only = set(args.only.split(","))
    results: dict = {"machine": machine(), "args": vars(args)}
    print(f"# queuectl storage benchmark\n\n{results['machine']}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; best of {max(1, args.repeat)}\n")

    def best(fn, *fargs) -> dict:
        runs = [fn(*fargs) for _ in range(max(1, args.repeat))]
        out = {}
        for key in runs[0]:
            values = [r[key] for r in runs if r[key] is not None]
            if not values:
                out[key] = None
            elif key.endswith("_s") and not key.endswith("per_s"):
                out[key] = min(values)
            else:
                out[key] = max(values)
        return out

    def row(*cells):
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)

    if "enqueue" in only:
        print(f"## enqueue ({args.enqueue_jobs} jobs in one batch; {args.single_enqueues} single enqueues)\n")
        row("backend", "API batch jobs/s", "CLI --file jobs/s", "API single jobs/s")
        row("---", "---:", "---:", "---:")
        for be in backends:
            r = results.setdefault("enqueue", {})[be] = best(bench_enqueue, be, args)
            row(be, f"{r['api_batch_jobs_per_s']:.0f}", f"{r['cli_file_jobs_per_s']:.0f}",
                f"{r['api_single_jobs_per_s']:.0f}")
        print()
    if "drain" in only:
        print(f"## drain ({args.drain_jobs} jobs of `true`, one pool, `worker start --count N --burst`)\n")
        row("backend", "workers", "wall jobs/s", "store jobs/s", "wall s")
        row("---", "---:", "---:", "---:", "---:")
        for be in backends:
            for k in counts:
                r = results.setdefault("drain", {}).setdefault(be, {})[k] = best(bench_drain, be, k, args)
                row(be, k, f"{r['wall_jobs_per_s']:.0f}", f"{r['store_jobs_per_s']:.0f}", f"{r['wall_s']:.2f}")
        print()
    if "store" in only:
        print(f"## store alone ({args.store_jobs} jobs, N processes looping claim -> finish(claim_next))\n")
        row("backend", "processes", "cycles/s")
        row("---", "---:", "---:")
        for be in backends:
            for k in counts:
                r = results.setdefault("store", {}).setdefault(be, {})[k] = best(bench_store, be, k, args)
                row(be, k, f"{r['cycles_per_s']:.0f}")
        print()
    if "pickup" in only:
        print(f"## pickup latency (idle worker, poll-interval 30 s, {args.pickup_samples} samples)\n")
        row("backend", "median ms", "p90 ms", "max ms")
        row("---", "---:", "---:", "---:")
        for be in backends:
            r = results.setdefault("pickup", {})[be] = bench_pickup(be, args)
            row(be, f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['max_ms']:.1f}")
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
