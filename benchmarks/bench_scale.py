"""Figure 4: claim-and-complete cost and read commands as the store grows.

The store is filled with pending jobs through the Python API (in batches) to each size
in turn (a size counts every stored job; the claim loops complete a few thousand of
them). Claim-and-complete is the worker's own path without the command: the store's
finish() records a successful attempt and claims the next job in one transaction, through
worker.record() with its retry decision and reporting hooks. The commands are timed
through the CLI, start-up included, as a user runs them.
"""
from __future__ import annotations

import os
import time

from .common import Instance, Results, median

SECTION = "scale"
TARGET_CLAIM_GROWTH = 1.5
TARGET_COMMAND_MS = 200.0
COMMANDS = (("status",), ("stats",), ("list", "--state", "pending", "--limit", "50"))


def claim_complete_us(queue, cycles: int) -> float:
    from queuectl.models import SUCCEEDED, Attempt, now
    from queuectl.worker import new_info, record

    info = new_info(queue, "worker")
    queue.store.register_worker(info)
    job = queue.store.claim(info, 30.0)
    start = time.perf_counter()
    for _ in range(cycles):
        stamp = now()
        attempt = Attempt(job.id, job.attempts, SUCCEEDED, stamp, stamp, exit_code=0, worker=info.id,
                          host=info.host, pid=info.pid)
        stored, job = record(queue, job, attempt, info, 30.0)
        if stored is None or job is None:
            raise RuntimeError("claim-and-complete lost its lease or ran out of jobs")
    elapsed = time.perf_counter() - start
    # give back the last claimed job and the worker row
    attempt = Attempt(job.id, job.attempts, SUCCEEDED, now(), now(), exit_code=0, worker=info.id)
    record(queue, job, attempt)
    queue.store.remove_worker(info.id)
    return elapsed / cycles * 1e6


def run(ctx) -> None:
    results: Results = ctx.results
    sizes = ctx.scale_sizes or ((500, 2_000, 5_000) if ctx.smoke else (10_000, 100_000, 1_000_000))
    cycles = 200 if ctx.smoke else 2_000
    repeats = 3 if ctx.smoke else 5
    inst = Instance(ctx.tmp / "scale")
    inst.run("init")
    stored = 0
    claims = {}
    command_ms = {}
    for size in sizes:
        fill_start = time.perf_counter()
        while stored < size:
            batch = min(50_000, size - stored)
            inst.queue.enqueue_many([{"command": "true"} for _ in range(batch)])
            stored += batch
        fill_s = time.perf_counter() - fill_start
        claims[size] = claim_complete_us(inst.queue, cycles)      # completes cycles + 1 of the stored jobs
        inst.close()
        db_bytes = sum(os.path.getsize(f"{inst.db}{s}") for s in ("", "-wal") if os.path.exists(f"{inst.db}{s}"))
        results.add(SECTION, f"claim+complete, {size:,} jobs stored", claims[size], "us",
                    detail={"cycles": cycles, "fill_seconds": fill_s, "db_bytes": db_bytes,
                            "counts": inst.counts()})
        for args in COMMANDS:
            for _ in range(2):
                inst.time_run(*args)                 # warm the page cache and start-up caches
            wall = median([inst.time_run(*args) for _ in range(repeats)]) * 1000
            name = " ".join(args)
            command_ms.setdefault(name, {})[size] = wall
            last = size == sizes[-1]
            results.add(SECTION, f"`{name}`, {size:,} jobs stored", wall, "ms",
                        target=f"< {TARGET_COMMAND_MS:g} ms" if last else "",
                        met=(wall < TARGET_COMMAND_MS) if last else None, detail={"repeats": repeats})
    growth = claims[sizes[-1]] / claims[sizes[0]]
    results.add(SECTION, f"claim cost growth {sizes[0]:,} -> {sizes[-1]:,}", growth, "x",
                target=f"<= {TARGET_CLAIM_GROWTH}x", met=growth <= TARGET_CLAIM_GROWTH,
                detail={"claim_us": {str(k): v for k, v in claims.items()}})
