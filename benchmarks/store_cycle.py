"""One worker's store work alone: N cycles of record-the-attempt-and-claim-the-next, as a worker's
``finish(..., claim_next=...)`` does after each job, on a store of ``QUEUECTL_CONFIG`` holding 1,300
pending jobs. No command runs. Used by store_cycle_instructions.sh, which counts its instructions.

    python benchmarks/store_cycle.py N
"""
from __future__ import annotations

import os
import sys
import time

from queuectl import Queue
from queuectl.models import Attempt
from queuectl.store import Transition, WorkerInfo

JOBS = 1300


def main() -> None:
    cycles = int(sys.argv[1])
    if cycles >= JOBS:
        raise SystemExit(f"at most {JOBS - 1} cycles")
    queue = Queue.open(config=os.environ["QUEUECTL_CONFIG"])
    queue.enqueue_many([{"command": "true"}] * JOBS)
    store = queue.store
    worker = WorkerInfo(id="w-1", host="bench", pid=os.getpid(), pid_start=None, kind="worker", pool_id=None)
    job = store.claim(worker, 30)
    for _ in range(cycles):
        now = time.time()
        attempt = Attempt(job.id, job.attempts, "succeeded", started_at=now - 0.001, finished_at=now, exit_code=0)
        _, job = store.finish(job.id, job.lease.token, attempt, Transition("completed", now), claim_next=worker,
                              lease_timeout=30)
    if queue.counts()["completed"] != cycles:
        raise SystemExit(f"expected {cycles} completed jobs, found {queue.counts()}")
    queue.close()


if __name__ == "__main__":
    main()
