"""The watchdog's board gives back the job the worker wrote, lease included, as a pickle of it would.

The board is what a watchdog reads once its worker is dead, to stop the attempt that ran: a job
read back wrong (a lost lease, a field changed) would leave a command running. The jobs here are
real claims from a real SQLite store.
"""
from __future__ import annotations

import fractions
import mmap
import os
import pickle

from queuectl import Queue, watchdog
from queuectl.store import WorkerInfo


def attributes(job) -> dict:
    state = dict(vars(job))
    if job.lease is not None:
        state["lease"] = dict(vars(job.lease))
    return state


def claimed_job(tmp_path, **spec):
    config = tmp_path / "config.yaml"
    config.write_text(f"db: {tmp_path / 'queue.db'}\n")
    queue = Queue.open(config=str(config), env={})
    queue.enqueue_many([spec])
    worker = WorkerInfo(id="w-board", host="here", pid=os.getpid(), pid_start=None, kind="worker", pool_id=None)
    job = queue.store.claim(worker, 30)
    queue.close()
    assert job is not None and job.lease is not None and job.lease.run_id
    return job


def test_a_claimed_job_comes_back_from_the_board_whole(tmp_path):
    job = claimed_job(tmp_path, command="echo 'a' \"b\" ü", env={"A": "1", "EMPTY": "", "UTF": "ü"},
                      labels={"team": "x", "k": "ü"}, cwd=str(tmp_path), timeout=2.5, priority=-3,
                      max_retries=7)
    memory = mmap.mmap(-1, 8 + 2 * watchdog.SLOT)
    board = watchdog.Board(-1, memory)
    board.watch(job)
    board.watch_group(4242)
    back = watchdog._last_attempt(memory)
    expected = attributes(pickle.loads(pickle.dumps(job)))
    expected["lease"]["pgid"] = 4242
    assert attributes(back) == expected
    assert type(back) is type(job) and type(back.lease) is type(job.lease)
    # the next attempt goes to the other slot and replaces the first one whole
    (tmp_path / "second").mkdir()
    second = claimed_job(tmp_path / "second", argv=["printf", "%s", "x y"])
    board.watch(second)
    assert attributes(watchdog._last_attempt(memory)) == attributes(second)


def test_a_value_marshal_cannot_write_still_reaches_the_board(tmp_path):
    job = claimed_job(tmp_path, command="true")
    job.fields = {"ratio": fractions.Fraction(1, 3), "nested": [{"a": (1, 2.5, None, True)}]}
    data = watchdog.encode(job)
    assert data[:1] == b"p"
    assert attributes(watchdog.decode(data)) == attributes(job)
    job.fields = {"nested": [{"a": (1, 2.5, None, True)}], "big": 2 ** 80}
    data = watchdog.encode(job)
    assert data[:1] == b"m"
    assert attributes(watchdog.decode(data)) == attributes(job)
