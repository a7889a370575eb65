"""Figure 7: `logs --follow` latency, from a line printed by a running job to the follower's stdout.

A job prints its clock (time.time()) once every 200 ms; `queuectl logs ID --follow --stdout` runs
in another process, started before the job, and for every line it prints the follower's reader
takes the difference between its own clock on arrival and the printed time. On SQLite the
follower polls one indexed read every 50 ms; on PostgreSQL (when one is reachable at
QUEUECTL_BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/test) it sleeps on LISTEN.
Also run as a script: ``python -m benchmarks.bench_follow [--lines N] [--backends sqlite,postgres]``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from .common import Instance, Results, percentile, stop_process

SECTION = "follow"
TARGET_P50 = 0.100
PG_URL = os.environ.get("QUEUECTL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
JOB = "python3 -u -c 'import time\nfor _ in range({n}):\n    print(repr(time.time()), flush=True); time.sleep(0.2)'"


def latencies(inst: Instance, lines: int) -> list[float]:
    """Seconds from each line's print to its arrival at the follower's stdout."""
    job_id = inst.queue.enqueue(command=JOB.format(n=lines), delay=1.5)     # the follower is ready first
    follower = inst.popen("logs", job_id, "--follow", "--stdout", stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL)
    pool = inst.popen("worker", "start", "--count", 1, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = []
    try:
        for raw in follower.stdout:
            found.append(time.time() - float(raw))
        follower.wait(60)
    finally:
        stop_process(pool)
        stop_process(follower)
    if len(found) != lines:
        raise RuntimeError(f"the follower saw {len(found)} of {lines} lines")
    return found


def backends(smoke: bool) -> list[tuple[str, dict]]:
    found = [("sqlite", {})]
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
        found.append(("postgres", {"db": PG_URL, "pg-schema": f"qb_{uuid.uuid4().hex[:10]}"}))
    except Exception:
        pass
    return found


def run(ctx, chosen=None, lines=None) -> None:
    results: Results = ctx.results
    lines = lines or (10 if ctx.smoke else 50)
    for name, config in backends(ctx.smoke):
        if chosen and name not in chosen:
            continue
        inst = Instance(ctx.tmp / f"follow-{name}", {"poll-interval": 1, **config})
        try:
            inst.run("init")
            found = latencies(inst, lines)
        finally:
            inst.close()
            if config.get("pg-schema"):
                import psycopg

                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{config["pg-schema"]}" CASCADE')
        p50, p95 = percentile(found, 50), percentile(found, 95)
        results.add(SECTION, f"{name}: follow latency p50 ({lines} lines, one per 200 ms)", p50, "s",
                    target="<= 100 ms", met=p50 <= TARGET_P50,
                    detail={"p95": p95, "max": max(found), "min": min(found), "samples": found})
        results.add(SECTION, f"{name}: follow latency p95", p95, "s", detail={"max": max(found)})
        spread = " ".join(f"p{q}={percentile(found, q) * 1000:.1f}" for q in (0, 10, 25, 50, 75, 90, 95, 100))
        results.note(f"{name} follow latency distribution (ms): {spread}")


def main(argv=None) -> int:
    import argparse
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_follow")
    parser.add_argument("--lines", type=int, default=50)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args(argv)

    class Ctx:
        smoke = False
        tmp = Path(tempfile.mkdtemp(prefix="queuectl-follow-"))
        results = Results()
    for key in [k for k in os.environ if k.startswith("QUEUECTL_") and k != "QUEUECTL_BENCH_PG_URL"]:
        del os.environ[key]
    run(Ctx, chosen=args.backends.split(","), lines=args.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
