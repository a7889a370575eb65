"""Figure 3: pickup latency of an idle worker, and what an idle worker costs in CPU.

Latency runs from `Queue.enqueue` returning (in this process) to the job's shell writing
to a FIFO that this process waits on, so it includes the wake-up, the claim, the fork
and exec of ``/bin/sh`` and the shell's own start. The pool runs with the default
settings (poll-interval 1 s): the wake-up comes from the enqueue, not from polling.
"""
from __future__ import annotations

import os
import select
import time

from .common import CLK_TCK, Instance, Results, children_of, cpu_ticks, median, percentile, stop_process, wait_for

SECTION = "pickup"
TARGET_P50_MS = 5.0
TARGET_IDLE_CPU = 1.0


def _idle_workers(inst: Instance, pool_pid: int, count: int) -> list[int]:
    def ready():
        pids = children_of(pool_pid)
        wake = inst.root / f".{inst.db.name}.wake"
        sockets = os.listdir(wake) if wake.is_dir() else []
        return pids if len(pids) >= count and len(sockets) >= count else None
    return wait_for(ready, 30, "the pool's workers to be idle")


def run(ctx) -> None:
    results: Results = ctx.results
    samples = 10 if ctx.smoke else 50
    cpu_seconds = 2.0 if ctx.smoke else 10.0
    inst = Instance(ctx.tmp / "pickup")
    inst.run("init")
    fifo = inst.root / "started.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)     # held open: a writer never blocks
    pool = inst.popen("worker", "start", "--count", 1)
    try:
        worker = _idle_workers(inst, pool.pid, 1)[0]
        time.sleep(0.5)

        # Idle CPU first, while nothing at all happens.
        w0, p0, t0 = cpu_ticks(worker), cpu_ticks(pool.pid), time.monotonic()
        time.sleep(cpu_seconds)
        w1, p1, t1 = cpu_ticks(worker), cpu_ticks(pool.pid), time.monotonic()
        worker_cpu = (w1 - w0) / CLK_TCK / (t1 - t0) * 100
        pool_cpu = (p1 - p0) / CLK_TCK / (t1 - t0) * 100
        results.add(SECTION, f"idle worker CPU over {t1 - t0:.0f} s", worker_cpu, "%",
                    target=f"<= {TARGET_IDLE_CPU} %", met=worker_cpu <= TARGET_IDLE_CPU,
                    detail={"pool_process_cpu_percent": pool_cpu, "clock_ticks_per_s": CLK_TCK,
                            "worker_ticks": w1 - w0, "pool_ticks": p1 - p0})
        results.note(f"the idle pool process itself used {pool_cpu:.2f} % CPU")

        queue = inst.queue
        latencies = []
        for i in range(samples + 2):
            queue.enqueue(command=f"echo {i} > {fifo}")
            start = time.perf_counter()
            ready, _, _ = select.select([fd], [], [], 10)
            end = time.perf_counter()
            if not ready:
                raise RuntimeError("a job did not start within 10 s")
            os.read(fd, 4096)
            if i >= 2:                          # the first two warm the worker's paths
                latencies.append((end - start) * 1000)
            time.sleep(0.05)                    # let the worker finish and go idle again
        p50, p95 = median(latencies), percentile(latencies, 95)
        results.add(SECTION, f"pickup latency p50 ({samples} samples)", p50, "ms",
                    target=f"<= {TARGET_P50_MS:g} ms", met=p50 <= TARGET_P50_MS,
                    detail={"samples_ms": latencies})
        results.add(SECTION, f"pickup latency p95 ({samples} samples)", p95, "ms", detail={"max_ms": max(latencies)})
    finally:
        inst.close()
        stop_process(pool)
        os.close(fd)
