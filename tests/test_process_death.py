"""A killed worker's command dies with it, on every path: the worker, the pool, or the whole group.

Real pools, real SIGKILLs, on SQLite and PostgreSQL. The torture kills whole pool process
groups every 1-2 s while jobs drain and counts lost, duplicated, overlapping and stuck jobs.
Its size is TORTURE_JOBS (default 120 here; the issue's run is TORTURE_JOBS=500):

    TORTURE_JOBS=500 .venv/bin/python -m pytest tests/test_process_death.py -k torture -s
"""
from __future__ import annotations

import collections
import json
import os
import random
import signal
import time

import pytest

from conftest import alive, pids_with_env, wait_until

BOTH_BACKENDS = True


def open_queue(instance):
    from queuectl import Queue

    return Queue.open(config=str(instance.config_path), env={})


def running_lease(queue, job_id: str):
    job = queue.store.get_job(job_id)
    lease = job.lease if job is not None and job.state == "processing" else None
    return lease if lease is not None and lease.pgid else None


def escaped_job(instance, marks) -> str:
    """A job whose real work runs in a setsid'd, double-forked grandchild: not in the command's group.

    Attempt 1 runs until it is killed (its grandchild would write its mark only after 300 s): with a
    run of 3 s, as it was, a slow machine could see the attempt end by itself before the test's kill,
    and a grandchild that escaped the kill shows as a live process of the tree, not as a late mark."""
    body = f'sleep 300; echo "finished $QUEUECTL_ATTEMPT" >> {marks}'
    command = (f'if [ "$QUEUECTL_ATTEMPT" = 1 ]; then (setsid sh -c \'{body}\' &) ; sleep 300; '
               f'else echo "finished $QUEUECTL_ATTEMPT" >> {marks}; fi')
    return instance.enqueue(command, max_retries=3)


def start_escaped(instance, queue, marks):
    job_id = escaped_job(instance, marks)
    pool = instance.start_pool(1, stderr=open(instance.root / "pool.log", "a"))
    lease = wait_until(lambda: running_lease(queue, job_id), message="the job to run")
    tree = wait_until(lambda: (lambda p: p if len(p) >= 4 else None)(
        pids_with_env(f"QUEUECTL_JOB_ID={job_id}")), message="the command's tree")
    return job_id, pool, lease, tree


def tree_death(tree) -> float:
    """Seconds until every process of ``tree`` is gone."""
    killed = time.monotonic()
    wait_until(lambda: not any(alive(p) for p in tree), timeout=10, interval=0.005,
               message="the command's whole tree to die")
    return time.monotonic() - killed


def assert_tree_dies_and_job_ends_once(instance, job_id, tree, marks) -> float:
    took = tree_death(tree)                   # the grandchild too: it is of the tree (its tag)
    assert not marks.exists(), "the killed attempt's grandchild ran to its end"
    pool = instance.start_pool(1)
    job = instance.wait_for_state(job_id, "completed", timeout=60)
    assert [h["outcome"] for h in job["history"]] == ["worker_lost", "succeeded"]
    assert marks.read_text().splitlines() == ["finished 2"], "the job completed exactly once"
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=60) == 0
    return took


@pytest.fixture
def escaped(instance):
    """A pool of one running a job whose work is in a setsid'd grandchild: (job id, pool, lease, tree, marks)."""
    marks = instance.root / "marks"
    queue = open_queue(instance)
    try:
        yield (*start_escaped(instance, queue, marks), marks)
    finally:
        queue.close()


def test_whole_group_sigkill_kills_the_setsid_grandchild(instance, escaped):
    job_id, pool, lease, tree, marks = escaped
    os.killpg(pool.pid, signal.SIGKILL)       # pool and workers at once; no pool is left to recover
    pool.wait(timeout=30)
    took = assert_tree_dies_and_job_ends_once(instance, job_id, tree, marks)
    assert "its watchdog killed" in (instance.root / "pool.log").read_text()
    print(f"\nwhole group SIGKILLed: the command's tree was gone {took * 1000:.0f} ms later")


def test_worker_only_sigkill_kills_the_setsid_grandchild(instance, escaped):
    job_id, pool, lease, tree, marks = escaped
    os.killpg(pool.pid, signal.SIGSTOP)       # the pool cannot help: only the watchdog can act
    os.kill(lease.pid, signal.SIGKILL)
    try:
        took = tree_death(tree)
    finally:
        os.killpg(pool.pid, signal.SIGCONT)
    os.killpg(pool.pid, signal.SIGKILL)
    pool.wait(timeout=30)
    assert_tree_dies_and_job_ends_once(instance, job_id, tree, marks)
    print(f"\nworker alone SIGKILLed (pool frozen): tree gone {took * 1000:.0f} ms later")


def test_pool_only_sigkill_lets_the_worker_finish_its_job_once(instance):
    """The worker outlives its pool only to finish the running job, records it, and exits."""
    marks = instance.root / "marks"
    queue = open_queue(instance)
    try:
        # The job ends once the pool is dead (the test lets it): a fixed 1 s run could end before a slow
        # machine's kill, and the test would pass without the worker outliving its pool.
        release = instance.root / "release"
        job_id = instance.enqueue(f'while [ ! -e {release} ]; do sleep 0.05; done; '
                                  f'echo "finished $QUEUECTL_ATTEMPT" >> {marks}')
        pool = instance.start_pool(1)
        lease = wait_until(lambda: running_lease(queue, job_id), message="the job to run")
        pool.kill()
        pool.wait(timeout=30)
        release.touch()
        wait_until(lambda: not alive(lease.pid), timeout=30, message="the worker to exit")
        job = instance.job(job_id)
        assert job["state"] == "completed" and [h["outcome"] for h in job["history"]] == ["succeeded"]
        assert marks.read_text().splitlines() == ["finished 1"]
        assert pids_with_env(f"QUEUECTL_JOB_ID={job_id}") == []
    finally:
        queue.close()


# --- the torture ----------------------------------------------------------------------------------


def torture_command(ledger, locks) -> str:
    # flock holds a per-job lock for the whole tree: an attempt that starts while an earlier one
    # of the same job still runs writes "overlap" instead of running.
    inner = (f'echo "start $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $(date +%s.%N)" >> {ledger}; sleep 0.2; '
             f'echo "end $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $(date +%s.%N)" >> {ledger}')
    return (f"flock -n -E 75 {locks}/$QUEUECTL_JOB_ID sh -c '{inner}'; rc=$?; "
            f'if [ $rc = 75 ]; then echo "overlap $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT" >> {ledger}; fi; '
            f"exit $rc")


def test_torture_whole_group_sigkill_every_1_to_2s(instance):
    size = int(os.environ.get("TORTURE_JOBS", "120"))
    root = instance.root
    ledger, locks, log = root / "ledger", root / "locks", root / "pool.log"
    locks.mkdir()
    command = torture_command(ledger, locks)
    ids = instance.run("enqueue", "--file", "-", input="\n".join(
        json.dumps({"command": command, "max_retries": 50}) for _ in range(size))).stdout.split()
    assert len(ids) == size
    queue = open_queue(instance)
    rng, kills, rounds = random.Random(10), [], max(3, size // 20)    # 500 jobs: 25 kills, as in the issue
    try:
        with open(log, "w") as err:
            while len(kills) < rounds and outstanding(queue):
                pool = instance.start_pool(4, stderr=err)
                time.sleep(rng.uniform(1.0, 2.0))
                kills.append(time.time())
                os.killpg(pool.pid, signal.SIGKILL)     # the pool, its workers and sources, all at once
                pool.wait(timeout=30)
            pool = instance.start_pool(4, stderr=err)    # then one pool drains what is left
            instance.wait_pool_up(pool)                  # (the kills may have left nothing: it must be up first)
            wait_until(lambda: not outstanding(queue), timeout=120 + size, interval=0.5,
                       message="every job to end after the kills")
            pool.send_signal(signal.SIGTERM)
            assert pool.wait(timeout=60) == 0
        report = torture_counts(queue, ids, ledger, kills)
    finally:
        queue.close()
    text = log.read_text(errors="replace")
    backend = "postgresql" if "://" in instance.config["db"] else "sqlite"
    print(f"\ntorture ({backend}): {size} jobs, {len(kills)} whole-group kills, "
          f"{text.count('its watchdog killed')} watchdog kills: " +
          ", ".join(f"{k} {v}" for k, v in report.items()))
    assert len(kills) >= 3, "the run was long enough to kill pools repeatedly"
    assert "Traceback" not in text
    assert report["lost"] == report["overlapping"] == report["stuck"] == 0, report
    # A command in its last milliseconds when its worker dies can still finish (the kernel tears the
    # worker down before its watchdog can act), and one that finished just before the kill was not
    # yet recorded: both run again (at least once), a few per run. That the watchdog kills at all
    # is checked by test_whole_group_sigkill_kills_the_setsid_grandchild; here only a loose bound,
    # so a loaded machine stays green.
    assert report["duplicated"] + report["unrecorded"] <= 2 * len(kills), report


def outstanding(queue) -> int:
    counts = queue.counts()
    return counts["pending"] + counts["failed"] + counts["processing"]


def torture_counts(queue, ids, ledger, kills) -> dict:
    """lost, duplicated (a command ran on after its worker was killed and completed again), overlapping,
    stuck; plus "unrecorded": an attempt whose command had finished before the kill, whose result
    was not yet committed, so it ran again: the at-least-once window, counted apart."""
    lines = [line.split() for line in (ledger.read_text().splitlines() if ledger.exists() else [])]
    starts = {(f[1], f[2]): float(f[3]) for f in lines if f[0] == "start"}
    ends = collections.defaultdict(list)
    for f in lines:
        if f[0] == "end":
            ends[f[1]].append((float(f[3]), starts[(f[1], f[2])]))
    overlapping = {f[1] for f in lines if f[0] == "overlap"}
    lost = stuck = duplicated = unrecorded = 0
    for job_id in ids:
        job = queue.store.get_job(job_id)
        if job.state in ("pending", "failed", "processing"):
            stuck += 1
        elif job.state != "completed" or not ends[job_id]:
            lost += 1
        for ended, started in sorted(ends[job_id])[:-1]:       # every completion but the last
            killed = min((k for k in kills if k > started), default=None)
            if killed is not None and ended < killed:
                unrecorded += 1
            else:
                duplicated += 1
                print(f"duplicate: job {job_id} ended {ended - (killed or 0):+.4f}s after the kill")
    return {"lost": lost, "duplicated": duplicated, "overlapping": len(overlapping), "stuck": stuck,
            "unrecorded": unrecorded}
