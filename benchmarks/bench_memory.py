"""Figure 5: resident memory of each worker, idle and after a job that prints 100 MB.

RSS and the peak RSS (VmHWM) come from /proc/PID/status; PSS (shared pages split between
the processes sharing them: a forked worker shares most of its pages with its pool) from
/proc/PID/smaps_rollup. The output cap keeps the stored output small; the figure checks
that the worker's peak stays bounded too.
"""
from __future__ import annotations

import time

from .bench_pickup import _idle_workers
from .common import Instance, Results, pss, proc_status, stop_process, wait_for

SECTION = "memory"
TARGET_RSS = 40 * 2**20


class LiveSize:
    """The most live output stored for a running job at once (where the queue keeps live output)."""

    def __init__(self, queue, job_id: str):
        self.queue, self.job_id = queue, job_id
        self.peak = None if not hasattr(queue, "output_since") else 0
        self.samples = 0

    def sample(self):
        job = self.queue.get(self.job_id)
        if self.peak is not None and job.state == "processing":
            chunks, _ = self.queue.output_since(self.job_id, job.attempts)
            self.peak = max(self.peak, sum(len(c["data"]) for c in chunks))
            self.samples += 1
        return job


def run(ctx) -> None:
    results: Results = ctx.results
    size = 10 * 2**20 if ctx.smoke else 100 * 2**20
    workers = 2
    inst = Instance(ctx.tmp / "memory")
    inst.run("init")
    pool = inst.popen("worker", "start", "--count", workers)
    try:
        pids = _idle_workers(inst, pool.pid, workers)
        time.sleep(0.3)
        idle = {pid: proc_status(pid) for pid in pids}
        worst = max(v["VmRSS"] for v in idle.values())
        results.add(SECTION, f"idle worker RSS (max of {workers})", worst, "bytes",
                    target="<= 40 MiB", met=worst <= TARGET_RSS,
                    detail={"workers": {str(p): {"rss": v["VmRSS"], "pss": pss(p)} for p, v in idle.items()},
                            "pool_rss": proc_status(pool.pid)["VmRSS"], "pool_pss": pss(pool.pid)})
        # a few ordinary jobs first, so the figure is not just a fresh fork
        queue = inst.queue
        for job_id in queue.enqueue_many([{"command": "echo warm-up"} for _ in range(20)]):
            wait_for(lambda: queue.get(job_id).state == "completed", 60, "warm-up jobs")
        job_id = queue.enqueue(command=f"head -c {size} /dev/zero | tr '\\0' x")
        start = time.monotonic()
        live = LiveSize(queue, job_id)
        job = wait_for(lambda: (lambda j: j if j.state in ("completed", "dead", "failed") else None)(live.sample()),
                       300, "the big-output job")
        took = time.monotonic() - start
        if job.state != "completed":
            raise RuntimeError(f"the big-output job ended {job.state}: {job.last_error}")
        stored = len(queue.attempts(job_id)[-1].stdout)
        after = {pid: proc_status(pid) for pid in pids}
        peak = max(v["VmHWM"] for v in after.values())
        now = max(v["VmRSS"] for v in after.values())
        results.add(SECTION, f"worker peak RSS, job printing {size // 2**20} MiB", peak, "bytes",
                    reference=worst, reference_name="idle", ratio=peak / worst, target="<= 40 MiB",
                    met=peak <= TARGET_RSS,
                    detail={"rss_after": now, "stored_stdout_bytes": stored, "printed_bytes": size,
                            "job_seconds": took,
                            "workers": {str(p): {"rss": v["VmRSS"], "hwm": v["VmHWM"], "pss": pss(p)}
                                        for p, v in after.items()}})
        results.note(f"the {size // 2**20} MiB job kept {stored:,} bytes of stdout (the output-cap), "
                     f"took {took:.2f} s; worker RSS afterwards {now / 2**20:.1f} MiB")
        if live.peak is not None:
            results.add(SECTION, "live output stored while the 100 MiB job ran (peak)", live.peak, "bytes",
                        reference=stored, reference_name="recorded stdout", ratio=live.peak / max(1, stored),
                        detail={"samples": live.samples})
    finally:
        inst.close()
        stop_process(pool)
