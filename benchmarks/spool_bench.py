"""Spool folder benchmark: ingestion rate and drop-to-enqueued latency.

Drops FILES job files into a spool folder the documented way (write a dotfile, rename it into
place) while a real `queuectl spool watch`
(or a worker pool, --workers N) watches it, then reads the receipts back. A file is enqueued at
its receipt's created_at (stamped in its insert transaction, after its jobs, just before the
commit); latency is that minus the moment its file was renamed into place.

--drop burst (the default) writes every dotfile first, then renames them all into place in one
burst: the files arrive at once, so the rate is the watcher's. --drop each
writes and renames one file after the other, as the first benchmark did: then the rate is
bounded by how fast this process creates files (slow on a busy disk; see drop_seconds).

    python benchmarks/spool_bench.py --files 5000
    python benchmarks/spool_bench.py --files 5000 --drop each
    python benchmarks/spool_bench.py --files 5000 --pg-url postgresql://postgres@127.0.0.1:5432/test
    python benchmarks/spool_bench.py --files 5000 --workers 2        # ingest while a pool runs jobs
    python benchmarks/spool_bench.py --files 2000 --rate 200          # latency without a backlog
    python benchmarks/spool_bench.py --files 2000 --observer polling
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

QUEUECTL = [sys.executable, "-m", "queuectl"]


def percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drop(folder: Path, name: str, text: str) -> float:
    """Drop one file; returns the moment of the rename (taken just before it, as the watcher may
    enqueue the job before this process runs again)."""
    temporary = folder / f".{name}.tmp"
    temporary.write_text(text)
    at = time.time()
    os.rename(temporary, folder / name)
    return at


def drop_all(folder: Path, count: int, rate: float, burst: bool = False) -> dict:
    """All at once (rate 0), or paced at `rate` files per second to see latency without a backlog.

    burst: every dotfile is written first (the watcher ignores them), then all are renamed into place."""
    names = [f"b{n:05}.yaml" for n in range(count)]
    if burst:
        for n, name in enumerate(names):
            (folder / f".{name}.tmp").write_text(f"command: echo {n}\n")
    dropped, began = {}, time.monotonic()
    for n, name in enumerate(names):
        if rate:
            time.sleep(max(0.0, began + n / rate - time.monotonic()))
        if burst:
            dropped[name] = time.time()
            os.rename(folder / f".{name}.tmp", folder / name)
        else:
            dropped[name] = drop(folder, name, f"command: echo {n}\n")
    return dropped


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def done_count(folder: Path) -> int:
    try:
        return len(os.listdir(folder / "done"))
    except FileNotFoundError:
        return 0


def start(root: Path, args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env["QUEUECTL_CONFIG"] = str(root / "config.yaml")
    command = ["worker", "start", "--count", str(args.workers)] if args.workers else ["spool", "watch"]
    return subprocess.Popen([*QUEUECTL, *command], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(root / "queuectl.log", "w"), start_new_session=True)


def run(args, root: Path) -> dict:
    spool = root / "spool"
    pg_url = getattr(args, "pg_url", None)
    store = f"db: {pg_url}\npg-schema: {args.pg_schema}\n" if pg_url else "db: queue.db\n"
    (root / "config.yaml").write_text(f"{store}spool: spool\nspool-observer: {args.observer}\npoll-interval: 0.05\n")
    proc = start(root, args)
    try:
        wait_for(lambda: (spool / "work").is_dir(), 30, "the spool folder")
        drop(spool, "warmup.yaml", "command: 'true'\n")     # a drop that is filed means the watcher is live
        wait_for(lambda: done_count(spool) == 1, 60, "the warm-up file")
        cpu = cpu_seconds(proc.pid)
        dropped = drop_all(spool, args.files, args.rate, burst=args.drop == "burst")
        wait_for(lambda: done_count(spool) == args.files + 1, args.timeout, "every file to be filed")
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    got = measure(root, dropped)
    if not args.workers:       # a pool ingests in a process of its own, not measured here
        got["watcher_cpu_us_per_file"] = round(cpu / args.files * 1e6, 1)
    return got


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux), in clock-tick resolution."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(root: Path, dropped: dict) -> dict:
    """When each file was enqueued, from its receipt (keyed by the drop id in its name in done/)."""
    from queuectl import Queue

    with Queue.open(config=str(root / "config.yaml"), env={}) as queue:
        stored_jobs = len(queue.list()) - 1
        receipts = [queue.store.get_receipt(f"spool:{filed.split('_', 1)[0]}")
                    for filed in os.listdir(root / "spool" / "done")]
    enqueued = {receipt["name"]: receipt["created_at"] for receipt in receipts if receipt is not None}
    jobs = sum(len(receipt["job_ids"]) for receipt in receipts if receipt is not None and receipt["name"] in dropped)
    latencies = [enqueued[name] - at for name, at in dropped.items()]
    first_drop, last_enqueued = min(dropped.values()), max(enqueued[name] for name in dropped)
    return {"files": len(dropped), "jobs": jobs, "stored_jobs": stored_jobs,
            "files_per_second": round(len(dropped) / (last_enqueued - first_drop), 1),
            "drop_seconds": round(max(dropped.values()) - first_drop, 3),
            "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
            "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
            "latency_max_ms": round(max(latencies) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=0, help="run a worker pool with N workers instead of "
                        "`spool watch`, so ingestion competes with running jobs")
    parser.add_argument("--observer", choices=("native", "polling", "off"), default="native")
    parser.add_argument("--rate", type=float, default=0.0, help="drop at most this many files per second "
                        "(default 0: all at once)")
    parser.add_argument("--drop", choices=("burst", "each"), default="burst", help="burst: write every dotfile "
                        "first, then rename all into place; each: write and rename one file after the other")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--pg-url", help="store the jobs in PostgreSQL at this URL (a private schema, dropped "
                        "afterwards) instead of SQLite")
    args = parser.parse_args()
    args.pg_schema = f"spool_bench_{uuid.uuid4().hex[:10]}"
    try:
        with tempfile.TemporaryDirectory(prefix="spool-bench-") as tmp:
            result = run(args, Path(tmp))
    finally:
        if args.pg_url:
            import psycopg

            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{args.pg_schema}" CASCADE')
    print(json.dumps(dict(result, workers=args.workers, observer=args.observer, rate=args.rate, drop=args.drop,
                          store="postgresql" if args.pg_url else "sqlite"), indent=2))


if __name__ == "__main__":
    main()
