"""Figure 1: drain throughput of `worker start --count N --burst`, against a spawn ceiling.

The ceiling is measured in the same run: N processes spawn ``/bin/sh -c true`` through
subprocess as fast as they can, with the executor's arguments (own session, stdin from
/dev/null, stdout and stderr through pipes read to the end, the environment copied), taking
work from one shared counter. Nothing of queuectl runs in the ceiling.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import time

from .common import Instance, Results, run_forked

SECTION = "drain"
TARGETS = {1: 0.85, 2: 0.8}     # of the ceiling with as many spawners; 4 workers: no lower than 2


def spawn_ceiling(processes: int, jobs: int) -> float:
    """Jobs/s of ``processes`` forked spawners sharing ``jobs`` runs of ``sh -c true``."""
    counter = multiprocessing.Value("q", 0)

    def spawner() -> None:
        base = dict(os.environ)
        while True:
            with counter.get_lock():
                if counter.value >= jobs:
                    return
                counter.value += 1
                n = counter.value
            env = dict(base)
            env.update({"QUEUECTL_JOB_ID": str(n), "QUEUECTL_ATTEMPT": "1", "QUEUECTL_RUN_ID": f"{n:032x}"})
            proc = subprocess.Popen(["/bin/sh", "-c", "true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
            proc.communicate()

    start = time.perf_counter()
    failed = run_forked(processes, lambda _: spawner())
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{failed} ceiling spawner(s) failed")
    return jobs / elapsed


def drain_once(inst: Instance, workers: int, jobs: int) -> dict:
    inst.reset_store()
    inst.queue.enqueue_many([{"command": "true"} for _ in range(jobs)])
    inst.close()
    start = time.perf_counter()
    proc = inst.run("worker", "start", "--count", workers, "--burst", stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    counts = inst.counts()
    if counts.get("completed", 0) != jobs:
        raise RuntimeError(f"drain with {workers} worker(s) left {counts} (stderr: {proc.stderr[-500:]})")
    stats = inst.queue.stats()
    inst.close()
    return {"wall_s": wall, "jobs_per_s": jobs / wall, "in_pool_jobs_per_s": stats.get("throughput")}


def run(ctx) -> None:
    results: Results = ctx.results
    jobs = 200 if ctx.smoke else 2000
    repeats = 1 if ctx.smoke else 3          # interleaved with the ceiling; the best of each counts
    inst = Instance(ctx.tmp / "drain", config={"poll-interval": 1.0})
    # what a burst pool costs with nothing to do: interpreter, plugins, fork, exit
    empty = min(inst.time_run("worker", "start", "--count", 2, "--burst") for _ in range(3))
    results.note(f"an empty `worker start --count 2 --burst` takes {empty * 1000:.0f} ms (included in each drain)")
    drained = {}
    for workers in (1, 2, 4):
        best, ceiling = None, 0.0
        for _ in range(repeats):
            ceiling = max(ceiling, spawn_ceiling(workers, jobs))
            once = drain_once(inst, workers, jobs)
            if best is None or once["jobs_per_s"] > best["jobs_per_s"]:
                best = once
        ratio = best["jobs_per_s"] / ceiling
        target = TARGETS.get(workers)
        drained[workers] = best["jobs_per_s"]
        results.add(SECTION, f"{jobs} x `true`, {workers} worker(s)", best["jobs_per_s"], "jobs/s",
                    reference=ceiling, reference_name=f"ceiling ({workers} spawners)", ratio=ratio,
                    target=f">= {target} of ceiling" if target else "",
                    met=(ratio >= target) if target else None,
                    detail={**best, "ceiling_jobs_per_s": ceiling, "jobs": jobs, "repeats": repeats,
                            "empty_burst_pool_s": empty})
    results.add(SECTION, f"{jobs} x `true`, 4 workers on {os.cpu_count()} cores vs 2 workers", drained[4], "jobs/s",
                reference=drained[2], reference_name="2 workers", ratio=drained[4] / drained[2], target=">= 1.0",
                met=drained[4] >= drained[2])
