"""The storage contract (queuectl/store.py): one suite, run against every built-in backend.

PostgreSQL tests use a private schema per test, dropped afterwards. Set QUEUECTL_TEST_PG_URL
to point them elsewhere (default: postgresql://postgres@127.0.0.1:5432/test). Outside CI they
are skipped when PostgreSQL (or psycopg) is missing; under CI (CI=true) they fail instead.
"""
from __future__ import annotations

import os
import select
import sqlite3
import subprocess
import sys
import threading
import time
import json
import uuid

import pytest

from queuectl import Queue
from queuectl.errors import Conflict, NotFound, QueueError, SchemaError, StoreBusy
from queuectl.models import Attempt, Job
from queuectl.store import Transition, WorkerInfo

from conftest import PG_URL, pg_execute, require_pg, wait_until

BACKENDS = ["sqlite", "postgres"]


class Backend:
    """A private store of one backend, and how to open more handles on it."""

    def __init__(self, kind: str, root):
        self.kind = kind
        self.root = root
        self.schema = f"qt_{uuid.uuid4().hex[:12]}" if kind == "postgres" else None
        self.config = root / "config.yaml"
        if kind == "postgres":
            self.config.write_text(f"db: {PG_URL}\npg-schema: {self.schema}\n")
        else:
            self.config.write_text("db: queue.db\n")
        self.queues: list[Queue] = []

    def open(self, **flags) -> Queue:
        queue = Queue.open(config=str(self.config), env={}, flags=flags)
        self.queues.append(queue)
        return queue

    def store(self, **flags):
        return self.open(**flags).store

    def raw(self, sql: str, params=()):
        """SQL straight to the backend, bypassing the store ({s} is the schema prefix)."""
        if self.kind == "postgres":
            return pg_execute(sql.replace("{s}", f'"{self.schema}".'), params)
        conn = sqlite3.connect(str(self.root / "queue.db"))
        try:
            rows = conn.execute(sql.replace("{s}", "").replace("%s", "?"), params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def cleanup(self) -> None:
        for queue in self.queues:
            queue.close()
        if self.kind == "postgres":
            pg_execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    if request.param == "postgres":
        require_pg()
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def pg(tmp_path):
    require_pg()
    b = Backend("postgres", tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend):
    return backend.store()


# --- helpers ---------------------------------------------------------------------------------


def make_job(job_id: str, command: str = "true", priority: int = 0, run_at: float | None = None, **kw) -> Job:
    now = time.time()
    return Job(id=job_id, command=command, priority=priority, created_at=now, updated_at=now,
               run_at=now if run_at is None else run_at, max_retries=kw.pop("max_retries", 3), **kw)


def worker(n: int = 1, host: str = "host-a", kind: str = "worker", pool_id=None) -> WorkerInfo:
    return WorkerInfo(id=f"{kind[0]}-{n}", host=host, pid=os.getpid(), pid_start=None, kind=kind, pool_id=pool_id)


def attempt(job: Job, outcome: str = "succeeded", duration: float = 0.01, **kw) -> Attempt:
    finished = time.time()
    return Attempt(job.id, job.attempts, outcome, started_at=finished - duration, finished_at=finished,
                   exit_code=kw.pop("exit_code", 0 if outcome == "succeeded" else 1), **kw)


def tally(store) -> dict:
    out: dict = {}
    for job in store.list_jobs():
        out[job.state] = out.get(job.state, 0) + 1
    return out


def nonzero(counts: dict) -> dict:
    return {k: v for k, v in counts.items() if v}


def ready(listener, timeout: float) -> bool:
    r, _, _ = select.select([listener], [], [], timeout)
    return bool(r)


# --- schema --------------------------------------------------------------------------------


def latest_schema(backend) -> int:
    if backend.kind == "postgres":
        from queuectl.builtin.postgres_store import SCHEMA_VERSION
    else:
        from queuectl.builtin.sqlite_store import SCHEMA_VERSION
    return SCHEMA_VERSION


def test_init_is_idempotent_and_described(backend):
    store = backend.store()
    store.init()
    store.init()
    info = store.describe()
    assert info["backend"] in ("sqlite", "postgresql")
    assert info["schema_version"] == latest_schema(backend)
    assert backend.store().describe()["schema_version"] == latest_schema(backend)   # a second handle finds it ready


def test_newer_schema_is_refused(backend):
    backend.store()
    backend.raw("UPDATE {s}meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaError, match="newer than this queuectl"):
        backend.store()


# --- jobs ------------------------------------------------------------------------------------


def test_add_jobs_round_trip(store, tmp_path):
    job = make_job("j1", "echo hi", priority=7, queue="q2", cwd=str(tmp_path), env={"A": "1"}, timeout=2.5,
                   source="cli", fields={"tag": "x"})
    store.add_jobs([job])
    got = store.get_job("j1")
    assert (got.id, got.command, got.state, got.priority, got.queue, got.cwd, got.env, got.timeout, got.source,
            got.fields, got.max_retries, got.attempts, got.tries) == \
           ("j1", "echo hi", "pending", 7, "q2", str(tmp_path), {"A": "1"}, 2.5, "cli", {"tag": "x"}, 3, 0, 0)
    assert abs(got.created_at - job.created_at) < 5 and abs(got.run_at - job.run_at) < 5
    assert got.lease is None
    assert store.get_job("nope") is None


def test_add_jobs_is_atomic_and_names_the_duplicate(store):
    store.add_jobs([make_job("a"), make_job("b")])
    with pytest.raises(Conflict, match="'a' already exists"):
        store.add_jobs([make_job("c"), make_job("a"), make_job("d")])
    with pytest.raises(Conflict, match="'e' already exists"):
        store.add_jobs([make_job("e"), make_job("e")])
    assert [j.id for j in store.list_jobs()] == ["a", "b"]
    assert nonzero(store.counts()) == {"pending": 2}


def test_receipts(store):
    receipt = {"key": "spool:f1", "name": "f1.json", "sha256": "abc"}
    store.add_jobs([make_job("r1"), make_job("r2")], receipt=receipt)
    got = store.get_receipt("spool:f1")
    assert (got["key"], got["name"], got["sha256"], got["job_ids"]) == ("spool:f1", "f1.json", "abc", ["r1", "r2"])
    assert abs(got["created_at"] - time.time()) < 5
    with pytest.raises(Conflict, match="already recorded"):
        store.add_jobs([make_job("r3")], receipt=receipt)
    assert store.get_job("r3") is None
    assert store.get_receipt("spool:other") is None


def test_deliveries_are_stored_together_or_not_at_all(store):
    store.add_jobs([make_job("u-old", unique_key="k")])
    got = store.add_deliveries([([make_job("d1"), make_job("d2")], {"key": "spool:a", "name": "a", "sha256": "1"}),
                                ([make_job("d3", unique_key="k")], {"key": "spool:b", "name": "b", "sha256": "2"}),
                                ([make_job("d4", after=["d1"])], None)])
    assert got == [["d1", "d2"], ["u-old"], ["d4"]]          # a unique key's holder stands in, as in add_jobs
    assert store.get_receipt("spool:a")["job_ids"] == ["d1", "d2"] and store.get_receipt("spool:b")["job_ids"] == ["u-old"]
    assert store.get_job("d4").waiting_on == 1

    # a receipt already recorded, or a missing dependency, in the second delivery: the first is not stored either
    for second, error in (("spool:b", Conflict), ("spool:new2", NotFound)):
        after = ["d1"] if error is Conflict else ["no-such-job"]
        with pytest.raises(error):
            store.add_deliveries([([make_job("e1")], {"key": "spool:new1"}),
                                  ([make_job("e2", after=after)], {"key": second})])
        assert store.get_job("e1") is None and store.get_job("e2") is None
        assert store.get_receipt("spool:new1") is None and store.get_receipt("spool:new2") is None
    assert store.get_receipt("spool:b")["job_ids"] == ["u-old"]


def test_list_jobs_order_state_limit_offset(store):
    store.add_jobs([make_job(f"l{i}") for i in range(6)])
    assert [j.id for j in store.list_jobs()] == [f"l{i}" for i in range(6)]
    assert [j.id for j in store.list_jobs(limit=2, offset=3)] == ["l3", "l4"]
    store.claim(worker(), 30)
    assert [j.id for j in store.list_jobs("processing")] == ["l0"]
    assert [j.id for j in store.list_jobs("pending", limit=2)] == ["l1", "l2"]
    assert store.list_jobs("dead") == []


# --- claiming ----------------------------------------------------------------------------------


def test_claim_order_is_priority_then_fifo(store):
    store.add_jobs([make_job("p0a"), make_job("p5a", priority=5), make_job("p0b"), make_job("p5b", priority=5),
                    make_job("m1", priority=-1), make_job("later", priority=99, run_at=time.time() + 60)])
    order = []
    while (job := store.claim(worker(), 30)) is not None:
        order.append(job.id)
    assert order == ["p5a", "p5b", "p0a", "p0b", "m1"]
    assert store.get_job("later").state == "pending"
    assert abs(store.next_run_at() - (time.time() + 60)) < 5


def test_claim_takes_a_lease(store):
    assert store.claim(worker(), 30) is None
    store.add_jobs([make_job("j")])
    w = worker(3, host="h9")
    job = store.claim(w, 30)
    assert (job.id, job.state, job.attempts, job.tries) == ("j", "processing", 1, 1)
    lease = job.lease
    assert (lease.owner, lease.host, lease.pid) == (w.id, "h9", os.getpid())
    assert lease.token >= 1 and len(lease.run_id) == 32 and not lease.expired
    assert abs(lease.expires - (time.time() + 30)) < 5
    assert abs(lease.started_at - time.time()) < 5
    assert store.get_job("j").lease.token == lease.token
    assert store.claim(worker(4), 30) is None


def test_claims_never_hand_out_a_job_twice(backend):
    backend.store().add_jobs([make_job(f"c{i}") for i in range(200)])
    stores = [backend.store() for _ in range(4)]
    claimed: list[list[str]] = [[] for _ in stores]

    def drain(i):
        while (job := stores[i].claim(worker(i), 30)) is not None:
            claimed[i].append(job.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [j for ids in claimed for j in ids]
    assert sorted(every) == sorted(f"c{i}" for i in range(200))
    assert nonzero(stores[0].counts()) == {"processing": 200}


def test_finish_records_and_claims_next_in_one_step(store):
    store.add_jobs([make_job("f1"), make_job("f2")])
    w = worker()
    job = store.claim(w, 30)
    done, following = store.finish(job.id, job.lease.token, attempt(job, stdout=b"out\x00", stderr=b"err"),
                                    Transition("completed", time.time()), claim_next=w, lease_timeout=30)
    assert (done.id, done.state, done.exit_code, done.lease) == ("f1", "completed", 0, None)
    assert following.id == "f2" and following.state == "processing" and following.lease.owner == w.id
    [a] = store.attempts("f1")
    assert (a.attempt, a.outcome, a.stdout, a.stderr, a.exit_code) == (1, "succeeded", b"out\x00", b"err", 0)
    assert store.attempts("f1", 1)[0].attempt == 1 and store.attempts("f1", 2) == []
    # an attempt interrupted by shutdown gives its try back
    done, following = store.finish(following.id, following.lease.token, attempt(following, "interrupted"),
                                   Transition("failed", time.time(), "interrupted", count_try=False))
    assert (done.state, done.tries, done.attempts, done.last_error, following) == ("failed", 0, 1, "interrupted", None)


TRANSITIONS = {
    "completed": ("succeeded", lambda now: Transition("completed", now)),
    "failed": ("failed", lambda now: Transition("failed", now + 60, "exit code 1")),
    "interrupted": ("interrupted", lambda now: Transition("failed", now, "interrupted", count_try=False)),
    "dead": ("failed", lambda now: Transition("dead", now, "gave up")),
    "cancelled": ("stopped", lambda now: Transition("cancelled", now, "cancelled by user")),
}


@pytest.mark.parametrize("ending", sorted(TRANSITIONS))
def test_finish_returns_the_job_as_stored(store, ending):
    """What finish hands the reporting hooks is the row as a read gives it, whatever changed in the row
    while the job ran: a cancel request, a lease renewal with its process group, a dependent enqueued."""
    fields = dict(env={"A": "1"}, labels={"team": "x"}, cwd="/tmp", timeout=5.0, source="cli",
                  unique_key="u-" + ending, priority=3)
    store.add_jobs([make_job("s1", **fields), make_job("s2", argv=["echo", "a b"]), make_job("s3")])
    w = worker()
    job = store.claim(w, 30)
    assert store.renew(job.id, job.lease.token, 30, pgid=4242)
    if ending == "cancelled":
        assert store.cancel_job(job.id) == "cancelling"
    store.add_jobs([make_job("waits", after=["s1"])])        # a dependent added while s1 runs
    outcome, transition = TRANSITIONS[ending]
    # (an interrupted job is due again at once: the same step would claim it back)
    done, following = store.finish(job.id, job.lease.token, attempt(job, outcome), transition(time.time()),
                                   claim_next=None if ending == "interrupted" else w, lease_timeout=30)
    assert done == store.get_job("s1")          # every field, the lease and the tries among them
    assert done.lease is None and done.state == transition(0).state
    assert done.cancel_requested == (ending == "cancelled")
    assert store.get_job("waits").state == ("pending" if ending in ("completed", "failed", "interrupted")
                                            else "dead")
    # the next job (claimed in the same step, or on its own) ends the same way through a second finish
    following = following or store.claim(w, 30)
    again, _ = store.finish(following.id, following.lease.token, attempt(following, outcome),
                            transition(time.time()))
    assert again == store.get_job(following.id)
    if ending != "interrupted":
        assert (again.id, again.argv) == ("s2", ["echo", "a b"])


def test_finish_of_a_job_claimed_elsewhere_returns_the_stored_job(backend):
    """A finish by another handle than the claim's (a pool's recovery, another process) reads the row."""
    first, second = backend.store(), backend.store()
    first.add_jobs([make_job("x", labels={"k": "v"})])
    job = first.claim(worker(), 30)
    done, _ = second.finish(job.id, job.lease.token, attempt(job, "failed"), Transition("failed", time.time(), "e"))
    assert done == second.get_job("x") and done.labels == {"k": "v"}


def test_failed_job_waits_for_its_run_at(store):
    store.add_jobs([make_job("w")])
    job = store.claim(worker(), 30)
    # 2 s: room for a slow machine between the finish and the first claim, which must find nothing
    store.finish(job.id, job.lease.token, attempt(job, "failed"), Transition("failed", time.time() + 2.0, "boom"))
    assert store.claim(worker(), 30) is None
    assert 0 < store.next_run_at() - time.time() <= 2.1
    again = wait_until(lambda: store.claim(worker(), 30), 30, 0.05, "the retry to be due")
    assert (again.id, again.attempts, again.tries) == ("w", 2, 2)


# --- leases and fencing ------------------------------------------------------------------------


def test_leases_expire_by_the_store_clock(store):
    store.add_jobs([make_job("e1"), make_job("e2")])
    short = store.claim(worker(1), 2.0)          # room for a slow machine before the first look
    store.claim(worker(2), 30)
    leases = {j.id: j.lease for j in store.leases()}
    assert set(leases) == {"e1", "e2"} and not leases["e1"].expired and not leases["e2"].expired
    leases = wait_until(lambda: (lambda ls: ls if ls["e1"].expired else None)(
        {j.id: j.lease for j in store.leases()}), 30, 0.05, "the short lease to expire")
    assert leases["e1"].expired and not leases["e2"].expired
    assert store.renew(short.id, short.lease.token, 30)           # still held: nobody took it over
    assert not {j.id: j.lease for j in store.leases()}["e1"].expired


def test_a_stale_token_changes_nothing(store):
    store.add_jobs([make_job("t")])
    first = store.claim(worker(1), 0.2)
    time.sleep(0.3)
    [expired] = store.leases()
    assert expired.lease.expired
    # another host recovers it, as the pool does, and a second worker claims it again
    lost = Attempt("t", expired.attempts, "worker_lost", time.time() - 1, time.time(), error="lease expired")
    recovered, _ = store.finish("t", expired.lease.token, lost, Transition("failed", time.time(), "lost"))
    assert recovered.state == "failed"
    second = store.claim(worker(2), 30)
    assert second.id == "t" and second.lease.token > first.lease.token
    before = store.get_job("t")
    # the first worker comes back: its renew and its result are refused
    assert store.renew("t", first.lease.token, 30, pgid=4242) is False
    assert store.finish("t", first.lease.token, attempt(first), Transition("completed", time.time()),
                        claim_next=worker(1), lease_timeout=30) == (None, None)
    after = store.get_job("t")
    assert (after.state, after.lease.owner, after.lease.token, after.lease.expires, after.lease.pgid) == \
           (before.state, before.lease.owner, before.lease.token, before.lease.expires, None)
    assert [a.outcome for a in store.attempts("t")] == ["worker_lost"]
    # the holder renews, and records its pgid once
    assert store.renew("t", second.lease.token, 60, pgid=777)
    held = store.get_job("t").lease
    assert held.pgid == 777 and held.expires > before.lease.expires
    assert store.renew("t", second.lease.token, 60)
    assert store.get_job("t").lease.pgid == 777


def test_retry_job(store):
    store.add_jobs([make_job("d", max_retries=0), make_job("ok")])
    job = store.claim(worker(), 30)
    store.finish(job.id, job.lease.token, attempt(job, "failed"), Transition("dead", time.time(), "gave up"))
    retried = store.retry_job("d", ("dead",))
    assert (retried.state, retried.tries, retried.attempts) == ("pending", 0, 1)
    with pytest.raises(Conflict, match="'ok' is pending, not dead"):
        store.retry_job("ok", ("dead",))
    with pytest.raises(Conflict, match="missing"):
        store.retry_job("nope", ("dead",))
    assert [store.claim(worker(), 30).id for _ in range(2)] == ["ok", "d"]      # run_at is now: FIFO again


# --- counts and statistics -------------------------------------------------------------------


def test_counts_follow_every_change(store):
    store.add_jobs([make_job(f"k{i}", max_retries=0) for i in range(5)])
    assert nonzero(store.counts()) == {"pending": 5} and store.has_outstanding()
    w = worker()
    a = store.claim(w, 30)
    b = store.claim(w, 30)
    assert nonzero(store.counts()) == nonzero(tally(store)) == {"pending": 3, "processing": 2}
    store.finish(a.id, a.lease.token, attempt(a), Transition("completed", time.time()))
    store.finish(b.id, b.lease.token, attempt(b, "failed"), Transition("dead", time.time()))
    store.retry_job(b.id, ("dead",))
    assert nonzero(store.counts()) == nonzero(tally(store)) == {"pending": 4, "completed": 1}
    while (job := store.claim(w, 30)) is not None:
        store.finish(job.id, job.lease.token, attempt(job), Transition("completed", time.time()))
    assert nonzero(store.counts()) == {"completed": 5}
    assert not store.has_outstanding()


def test_stats(store):
    empty = store.stats()
    assert (empty["total_runs"], empty["avg_duration"], empty["p50_duration"], empty["throughput"]) == \
           (0, None, None, None)
    store.add_jobs([make_job(f"s{i}", max_retries=0) for i in range(4)])
    for duration, outcome in ((0.1, "succeeded"), (0.2, "succeeded"), (0.2, "failed"), (0.8, "succeeded")):
        job = store.claim(worker(), 30)
        state = "completed" if outcome == "succeeded" else "dead"
        store.finish(job.id, job.lease.token, attempt(job, outcome, duration), Transition(state, time.time()))
    stats = store.stats()
    assert (stats["total_runs"], stats["failed_runs"], stats["dead_jobs"], stats["completed_jobs"]) == (4, 1, 1, 3)
    assert stats["avg_duration"] == pytest.approx(0.325, rel=1e-3)
    assert stats["p50_duration"] == pytest.approx(0.2, rel=0.2)
    assert stats["p95_duration"] == pytest.approx(0.8, rel=0.2)
    assert stats["throughput"] > 0 and stats["throughput_1m"] == pytest.approx(4 / 60)


# --- settings and workers ------------------------------------------------------------------------


def test_settings(store):
    assert store.get_settings() == {}
    store.set_setting("max-retries", 5)
    store.set_setting("disable-plugins", ["a", "b"])
    store.set_setting("max-retries", 7)
    assert store.get_settings() == {"max-retries": 7, "disable-plugins": ["a", "b"]}
    assert store.unset_setting("max-retries") is True
    assert store.unset_setting("max-retries") is False
    assert store.get_settings() == {"disable-plugins": ["a", "b"]}


def test_workers_and_stop_requests(store):
    pool_a = worker(1, "host-a", "pool")
    pool_b = worker(2, "host-b", "pool")
    w = worker(3, "host-a", "worker", pool_id=pool_a.id)
    for info in (pool_a, pool_b, w):
        store.register_worker(info)
    store.add_jobs([make_job("busy")])
    store.claim(w, 30)
    rows = {r["id"]: r for r in store.workers()}
    assert set(rows) == {pool_a.id, pool_b.id, w.id}
    assert (rows[w.id]["kind"], rows[w.id]["pool_id"], rows[w.id]["job_id"], rows[w.id]["host"]) == \
           ("worker", pool_a.id, "busy", "host-a")
    assert rows[pool_a.id]["job_id"] is None and rows[pool_a.id]["stop_requested"] == 0
    assert store.heartbeat_worker(pool_a.id) and store.heartbeat_worker(w.id)
    assert store.request_stop(host="host-b") == 1
    assert store.heartbeat_worker(pool_a.id) and not store.heartbeat_worker(pool_b.id)
    assert store.request_stop() == 2
    assert not store.heartbeat_worker(pool_a.id)
    assert store.heartbeat_worker(w.id)                     # stop requests are for pools
    assert store.heartbeat_worker("gone")                   # an unknown id is not asked to stop
    store.register_worker(pool_a)                           # registering again starts afresh
    assert store.heartbeat_worker(pool_a.id)
    store.remove_worker(pool_a.id)                          # a pool takes its workers' rows with it
    assert [r["id"] for r in store.workers()] == [pool_b.id]


# --- wake-ups ----------------------------------------------------------------------------------


def test_notify_wakes_a_listener(backend):
    store = backend.store()
    listener = store.listener("t1")
    assert listener is not None
    try:
        listener.drain()
        assert not ready(listener, 0.1)
        other = backend.store()                 # another handle, as another process would have
        other.notify()
        assert ready(listener, 2.0)
        listener.drain()
        assert not ready(listener, 0.1)
        store.notify()
        assert ready(listener, 2.0)
        listener.drain()
    finally:
        listener.close()


# --- scheduling and control ------------------------------------------------------------------


def run(store, job, outcome: str = "succeeded", state: str = "completed"):
    """Finish a claimed job as ``state``."""
    done, _ = store.finish(job.id, job.lease.token, attempt(job, outcome), Transition(state, time.time(), "x"))
    return done


def claim_id(store, w=None):
    job = store.claim(w or worker(), 30)
    return job.id if job else None


def test_add_jobs_returns_ids_and_a_unique_key_returns_its_holder(store):
    assert store.add_jobs([make_job("u1", unique_key="k"), make_job("plain")]) == ["u1", "plain"]
    # held while pending: nothing stored, the holder's id in its place (also twice in one batch)
    assert store.add_jobs([make_job("u2", unique_key="k"), make_job("p2"), make_job("u3", unique_key="k"),
                           make_job("v1", unique_key="other"), make_job("v2", unique_key="other")]) == \
           ["u1", "p2", "u1", "v1", "v1"]
    assert store.get_job("u2") is None and store.get_job("u3") is None and store.get_job("v2") is None
    assert store.get_job("u1").unique_key == "k"
    assert nonzero(store.counts()) == {"pending": 4}
    # held while processing and while failed (waiting for a retry)
    job = store.claim(worker(), 30)
    assert job.id == "u1"
    assert store.add_jobs([make_job("u4", unique_key="k")]) == ["u1"]
    store.finish(job.id, job.lease.token, attempt(job, "failed"), Transition("failed", time.time() + 60, "boom"))
    assert store.add_jobs([make_job("u4", unique_key="k")]) == ["u1"]
    # free once the holder has finished (here: cancelled), and a receipt lists the ids returned
    assert store.cancel_job("u1") == "cancelled"
    assert store.add_jobs([make_job("u5", unique_key="k"), make_job("u6", unique_key="k")],
                          receipt={"key": "r"}) == ["u5", "u5"]
    assert store.get_receipt("r")["job_ids"] == ["u5", "u5"]
    # a duplicate id is still a Conflict, with or without a key, and stores nothing
    with pytest.raises(Conflict, match="'plain' already exists"):
        store.add_jobs([make_job("new", unique_key="fresh"), make_job("plain", unique_key="k2")])
    assert store.get_job("new") is None


def test_unique_key_holds_across_concurrent_enqueues(backend):
    stores = [backend.store() for _ in range(4)]
    results: list = [None] * len(stores)
    barrier = threading.Barrier(len(stores))

    def enqueue(i):
        barrier.wait()
        results[i] = stores[i].add_jobs([make_job(f"c{i}", unique_key="once")])[0]

    threads = [threading.Thread(target=enqueue, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(results)) == 1 and results[0] in {f"c{i}" for i in range(len(stores))}
    assert [j.id for j in stores[0].list_jobs()] == [results[0]]


def test_dependencies_wait_until_every_one_completes(store):
    store.add_jobs([make_job("a"), make_job("b"), make_job("done")])
    run(store, store.claim(worker(), 30))                    # a completes
    assert store.add_jobs([make_job("c", after=["a", "b"]), make_job("d", after=["c", "done"])]) == ["c", "d"]
    # "done" was still pending when d was stored; a was complete when c was
    c, d = store.get_job("c"), store.get_job("d")
    assert (c.after, c.waiting_on, d.after, d.waiting_on) == (["a", "b"], 1, ["c", "done"], 2)
    assert [claim_id(store) for _ in range(3)] == ["b", "done", None]       # c and d wait
    b, done = store.get_job("b"), store.get_job("done")
    run(store, b)
    assert store.get_job("c").waiting_on == 0
    job = store.claim(worker(), 30)
    assert job.id == "c"
    run(store, job)
    assert store.get_job("d").waiting_on == 1 and claim_id(store) is None
    run(store, done)
    assert claim_id(store) == "d"


def test_an_unknown_dependency_is_refused_and_nothing_is_stored(store):
    from queuectl.errors import NotFound

    store.add_jobs([make_job("x")])
    with pytest.raises(NotFound, match="'nope'"):
        store.add_jobs([make_job("y"), make_job("z", after=["x", "nope"])], receipt={"key": "k"})
    assert [j.id for j in store.list_jobs()] == ["x"] and store.get_receipt("k") is None
    # a job of the same batch is a valid dependency, listed before or after its dependent
    assert store.add_jobs([make_job("late", after=["early"]), make_job("early")]) == ["late", "early"]
    assert store.get_job("late").waiting_on == 1


def test_a_dead_or_cancelled_dependency_kills_its_dependents_transitively(store):
    store.add_jobs([make_job("root", max_retries=0), make_job("mid", after=["root"]),
                    make_job("leaf", after=["mid"]), make_job("side", after=["root"]), make_job("free")])
    root = store.claim(worker(), 30)
    assert root.id == "root"
    run(store, root, "failed", "dead")
    for job_id, reason in (("mid", "dependency root ended dead"), ("leaf", "dependency mid ended dead"),
                           ("side", "dependency root ended dead")):
        job = store.get_job(job_id)
        assert (job.state, job.last_error) == ("dead", reason)
    assert store.get_job("free").state == "pending"
    assert nonzero(store.counts()) == nonzero(tally(store)) == {"dead": 4, "pending": 1}
    # enqueued after the fact: dead at once
    store.add_jobs([make_job("too-late", after=["free", "root"])])
    assert (store.get_job("too-late").state, store.get_job("too-late").last_error) == \
           ("dead", "dependency root ended dead")
    # cancel kills dependents too
    store.add_jobs([make_job("gate"), make_job("behind", after=["gate"])])
    assert store.cancel_job("gate") == "cancelled"
    assert (store.get_job("behind").state, store.get_job("behind").last_error) == \
           ("dead", "dependency gate ended cancelled")
    store.add_jobs([make_job("after-cancel", after=["gate"])])
    assert store.get_job("after-cancel").state == "dead"


def test_a_batch_dependent_of_a_job_that_is_dead_at_once_dies_too(backend):
    store = backend.store()
    store.add_jobs([make_job("gone")])
    assert store.cancel_job("gone") == "cancelled"
    store.add_jobs([make_job("second", after=["first"]), make_job("first", after=["gone"])])
    assert store.get_job("first").state == "dead"
    assert store.get_job("second").state == "dead"


def test_retry_job_conflicts(store):
    store.add_jobs([make_job("holder", unique_key="k", max_retries=0), make_job("dep", max_retries=0),
                    make_job("child", after=["dep"])])
    job = store.claim(worker(), 30)
    assert job.id == "holder"
    run(store, job, "failed", "dead")
    store.add_jobs([make_job("taker", unique_key="k")])
    with pytest.raises(Conflict, match="unique key is held by another job"):
        store.retry_job("holder", ("dead",))
    assert store.get_job("holder").state == "dead"
    dep = store.claim(worker(), 30)
    run(store, dep, "failed", "dead")
    assert store.get_job("child").state == "dead"
    with pytest.raises(Conflict, match="waits for 'dep', which is dead: retry that first"):
        store.retry_job("child", ("dead",))
    store.retry_job("dep", ("dead",))
    child = store.retry_job("child", ("dead",))
    assert (child.state, child.waiting_on) == ("pending", 1)       # waits for dep again
    assert [claim_id(store) for _ in range(2)] == ["taker", "dep"]


def test_cancel_job(store):
    from queuectl.errors import NotFound

    store.add_jobs([make_job("running"), make_job("failing"), make_job("queued")])
    running = store.claim(worker(), 30)
    failing = store.claim(worker(2), 30)
    assert failing.id == "failing"
    store.finish(failing.id, failing.lease.token, attempt(failing, "failed"),
                 Transition("failed", time.time() + 60, "boom"))
    assert store.cancel_job("failing") == "cancelled"              # failed, waiting for its retry
    assert store.cancel_job("queued") == "cancelled"               # pending
    job = store.get_job("queued")
    assert (job.state, job.last_error) == ("cancelled", "cancelled by user")
    assert not store.cancel_requested("running", running.lease.token)
    assert store.cancel_job("running") == "cancelling"
    assert store.get_job("running").state == "processing" and store.get_job("running").cancel_requested
    assert store.cancel_requested("running", running.lease.token)
    assert not store.cancel_requested("running", running.lease.token + 1)
    run(store, running, "cancelled", "cancelled")
    with pytest.raises(Conflict, match="'running' is cancelled: nothing to cancel"):
        store.cancel_job("running")
    with pytest.raises(NotFound):
        store.cancel_job("nope")
    assert nonzero(store.counts()) == nonzero(tally(store)) == {"cancelled": 3}
    assert store.claim(worker(), 30) is None and not store.has_outstanding()
    # a retried job starts afresh, without the old request
    again = store.retry_job("running", ("cancelled",))
    assert (again.state, again.cancel_requested) == ("pending", False)


def test_paused_queue_and_worker_queue_lists(store):
    assert store.set_queue("slow", paused=True) == \
           {"name": "slow", "concurrency": None, "paused": True, "pending": 0, "processing": 0}
    store.add_jobs([make_job("s1", queue="slow", priority=9), make_job("d1"), make_job("o1", queue="other")])
    assert store.has_outstanding(["slow"]) is False
    assert store.has_outstanding(["other"]) is True
    only_slow = WorkerInfo(id="w-slow", host="h", pid=os.getpid(), pid_start=None, queues=["slow"])
    assert store.claim(only_slow, 30) is None                      # paused
    both = WorkerInfo(id="w-two", host="h", pid=os.getpid(), pid_start=None, queues=["slow", "other"])
    assert claim_id(store, both) == "o1"
    assert claim_id(store, both) is None                           # d1 is not theirs
    assert store.set_queue("slow", paused=False)["paused"] is False
    assert claim_id(store, both) == "s1"
    assert claim_id(store) == "d1"
    assert store.has_outstanding(["nothing-here"]) is False
    rows = {q["name"]: q for q in store.queues()}
    assert rows["slow"] == {"name": "slow", "concurrency": None, "paused": False, "pending": 0, "processing": 1}
    assert rows["default"]["processing"] == 1 and rows["other"]["processing"] == 1
    assert [q["name"] for q in store.queues()] == ["default", "other", "slow"]


def test_concurrency_limit_and_order(store):
    assert store.set_queue("serial", concurrency=1)["concurrency"] == 1
    store.add_jobs([make_job("s1", queue="serial", priority=5), make_job("s2", queue="serial", priority=5),
                    make_job("d1"), make_job("d2", priority=1), make_job("s3", queue="serial", priority=9)])
    w = worker()
    assert [claim_id(store, w) for _ in range(4)] == ["s3", "d2", "d1", None]      # serial is full
    rows = {q["name"]: q for q in store.queues()}
    assert (rows["serial"]["concurrency"], rows["serial"]["pending"], rows["serial"]["processing"]) == (1, 2, 1)
    s3 = store.get_job("s3")
    # finishing one frees its slot, also for the job claimed in the same transaction
    done, following = store.finish(s3.id, s3.lease.token, attempt(s3), Transition("completed", time.time()),
                                   claim_next=w, lease_timeout=30)
    assert following.id == "s1"
    assert claim_id(store, w) is None
    assert store.set_queue("serial", concurrency=2)["concurrency"] == 2
    assert claim_id(store, w) == "s2"
    store.set_queue("serial", concurrency=None)
    store.add_jobs([make_job("s4", queue="serial")])
    assert claim_id(store, w) == "s4"                               # unlimited again
    assert store.set_queue("serial", paused=True)["concurrency"] is None        # a pause keeps the limit as is


CLAIMER = r"""
import json, os, sys, time
from queuectl import Queue
from queuectl.models import Attempt
from queuectl.store import Transition, WorkerInfo

queue = Queue.open(config=sys.argv[1], env={})
store = queue.store
me = WorkerInfo(id=f"w-{os.getpid()}", host="h", pid=os.getpid(), pid_start=None)
open(f"ready-{os.getpid()}", "w").close()
while not os.path.exists("go"):
    time.sleep(0.005)
spans = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    job = store.claim(me, 30)
    if job is None:
        if not store.has_outstanding():
            break
        time.sleep(0.005)
        continue
    start = time.monotonic()
    time.sleep(0.03)
    end = time.monotonic()
    spans.append((job.queue, start, end))
    store.finish(job.id, job.lease.token, Attempt(job.id, job.attempts, "succeeded", time.time(), time.time()),
                 Transition("completed", time.time()))
print(json.dumps(spans))
"""


def test_a_concurrency_limit_holds_across_processes(backend, tmp_path):
    """Three processes claim at once from a queue limited to one: never two of its jobs at a time."""
    store = backend.store()
    store.set_queue("serial", concurrency=1)
    store.add_jobs([make_job(f"s{i}", queue="serial") for i in range(15)] +
                   [make_job(f"o{i}") for i in range(15)])
    script = tmp_path / "claimer.py"
    script.write_text(CLAIMER)
    procs = [subprocess.Popen([sys.executable, str(script), str(backend.config)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=backend.root) for _ in range(3)]
    try:
        ready = lambda: len(list(backend.root.glob("ready-*"))) == 3 or any(p.poll() is not None for p in procs)
        deadline = time.monotonic() + 60
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        (backend.root / "go").touch()
    except BaseException:
        for p in procs:
            p.kill()
        raise
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    spans = [span for out, _ in outputs for span in json.loads(out)]
    serial = sorted((start, end) for q, start, end in spans if q == "serial")
    assert len(serial) == 15 and len(spans) == 30
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(serial, serial[1:])), serial
    others = sorted((start, end) for q, start, end in spans if q == "default")
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(others, others[1:]))   # these overlap
    assert nonzero(store.counts()) == {"completed": 30}


def test_has_outstanding_and_next_run_at(store):
    assert not store.has_outstanding() and store.next_run_at() is None
    later = time.time() + 120
    store.add_jobs([make_job("later", run_at=later)])
    assert not store.has_outstanding()                              # scheduled for later
    assert abs(store.next_run_at() - later) < 5
    store.add_jobs([make_job("now", run_at=time.time() + 2.0), make_job("blocked", after=["later"])])
    assert not store.has_outstanding()                              # waiting jobs do not count
    assert store.next_run_at() < later - 60                         # nor for the next run
    wait_until(store.has_outstanding, 30, 0.05, "'now' to be due")
    assert store.has_outstanding() and store.has_outstanding(["default"]) and not store.has_outstanding(["q"])
    job = store.claim(worker(), 30)
    assert job.id == "now" and store.has_outstanding()              # processing
    store.finish(job.id, job.lease.token, attempt(job, "failed"), Transition("failed", time.time() + 60, "e"))
    assert store.has_outstanding()                                  # failed: a retry is due
    store.set_queue("default", paused=True)
    assert not store.has_outstanding()                              # ...in a paused queue
    store.set_queue("default", paused=False)
    assert store.cancel_job("now") == "cancelled"
    assert not store.has_outstanding()


def test_schedules_fire_each_tick_once(backend):
    store = backend.store()
    assert store.schedules() == []
    store.add_schedule("nightly", "0 2 * * *", {"command": "backup"}, "once", 1000.0)
    store.add_schedule("a-first", "* * * * *", {"command": "x"}, "skip", 2000.5)
    with pytest.raises(Conflict, match="'nightly' already exists"):
        store.add_schedule("nightly", "0 3 * * *", {"command": "other"}, "once", 1.0)
    rows = store.schedules()
    assert [s["name"] for s in rows] == ["a-first", "nightly"]
    nightly = rows[1]
    assert (nightly["cron"], nightly["spec"], nightly["missed"], nightly["last_tick"]) == \
           ("0 2 * * *", {"command": "backup"}, "once", 1000.0)
    assert abs(nightly["created_at"] - time.time()) < 5
    store.add_schedule("nightly", "0 3 * * *", {"command": "other"}, "skip", 1500.25, replace=True)
    nightly = next(s for s in store.schedules() if s["name"] == "nightly")
    assert (nightly["cron"], nightly["spec"], nightly["last_tick"]) == ("0 3 * * *", {"command": "other"}, 1500.25)
    # compare-and-set: only the first of several pools fires a tick
    stores = [backend.store() for _ in range(4)]
    fired: list = [None] * len(stores)
    barrier = threading.Barrier(len(stores))

    def fire(i):
        barrier.wait()
        fired[i] = stores[i].fire_schedule("nightly", 1500.25, 1600.0,
                                           [make_job("nightly-1600", source="schedule:nightly")])

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(fired) == [False, False, False, True]
    assert [(j.id, j.source) for j in store.list_jobs()] == [("nightly-1600", "schedule:nightly")]
    assert next(s for s in store.schedules() if s["name"] == "nightly")["last_tick"] == 1600.0
    assert store.fire_schedule("nightly", 1500.25, 1700.0, [make_job("nightly-1700")]) is False
    assert store.fire_schedule("nightly", 1600.0, 1700.0, []) is True          # a skipped tick stores no job
    assert store.get_job("nightly-1700") is None
    assert store.remove_schedule("nightly") is True
    assert store.remove_schedule("nightly") is False
    assert [s["name"] for s in store.schedules()] == ["a-first"]


def test_purge(backend):
    from queuectl.errors import NotFound

    store = backend.store()
    store.add_jobs([make_job("old-done"), make_job("old-dead", max_retries=0), make_job("keep-pending"),
                    make_job("child", after=["old-done", "keep-pending"])])
    for state in ("completed", "dead"):
        job = store.claim(worker(), 30)
        run(store, job, "succeeded" if state == "completed" else "failed", state)
    time.sleep(0.3)
    cutoff = time.time() - 0.1
    job = store.claim(worker(), 30)
    assert job.id == "keep-pending"
    run(store, job)                                     # completed, but after the cutoff
    assert store.purge(("completed",), cutoff) == 1
    assert store.get_job("old-done") is None and store.attempts("old-done") == []
    assert store.get_job("old-dead").state == "dead" and store.get_job("keep-pending").state == "completed"
    # the satisfied dependency on the purged job stays satisfied
    child = store.get_job("child")
    assert (child.state, child.waiting_on) == ("pending", 0)
    assert claim_id(store) == "child"
    assert store.purge(("dead", "cancelled"), time.time() + 1) == 1
    assert store.attempts("old-dead") == []
    assert nonzero(store.counts()) == nonzero(tally(store)) == {"completed": 1, "processing": 1}
    rows = backend.raw("SELECT job_id, dep_id, satisfied FROM {s}job_deps ORDER BY dep_id")
    assert [tuple(r) for r in rows] == [("child", "keep-pending", 1), ("child", "old-done", 1)]
    store.add_jobs([make_job("gone-dep-child", after=["keep-pending"])])
    with pytest.raises(NotFound, match="'old-done'"):
        store.add_jobs([make_job("x", after=["old-done"])])      # purged: no longer a job


def create_old_store(backend, version: int) -> None:
    """A store as queuectl at schema ``version`` left it (its migrations only, all plain SQL)."""
    if backend.kind == "postgres":
        from queuectl.builtin.postgres_store import MIGRATIONS

        schema = f'"{backend.schema}"'
        statements = [f"CREATE SCHEMA {schema}", f"CREATE TABLE {schema}.meta (key text PRIMARY KEY, value text)"]
        statements += [s.replace("{s}", schema) for v in range(1, version + 1) for s in MIGRATIONS[v]]
        statements.append(f"INSERT INTO {schema}.meta VALUES ('schema_version', '{version}')")
        for sql in statements:
            pg_execute(sql)
    else:
        from queuectl.builtin.sqlite_store import MIGRATIONS

        conn = sqlite3.connect(str(backend.root / "queue.db"))
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for v in range(1, version + 1):
            for sql in MIGRATIONS[v]:
                sql(conn) if callable(sql) else conn.execute(sql)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
        conn.commit()
        conn.close()


def test_a_version_1_store_is_migrated(backend):
    """Jobs stored before scheduling and control came in keep working after the upgrade."""
    create_old_store(backend, 1)
    backend.raw("INSERT INTO {s}jobs (id, command, state, max_retries, created_at, updated_at, run_at) "
                "VALUES ('v1-job', 'true', 'pending', 3, 1, 1, 1)")
    store = backend.store()
    assert store.describe()["schema_version"] == latest_schema(backend)
    job = store.get_job("v1-job")
    assert (job.state, job.unique_key, job.after, job.waiting_on, job.cancel_requested) == \
           ("pending", None, [], 0, False)
    assert (job.labels, job.argv, job.edits) == ({}, None, [])          # schema 3's columns, read as empty
    assert store.claim(worker(), 30).id == "v1-job"
    assert store.add_jobs([make_job("v2-job", after=["v1-job"], unique_key="u")]) == ["v2-job"]


# --- PostgreSQL only ------------------------------------------------------------------------------


def test_pg_schemas_keep_queues_apart(pg, tmp_path):
    store = pg.store()
    other_root = tmp_path / "other"
    other_root.mkdir()
    other = Backend("postgres", other_root)
    try:
        other_store = other.store()
        listener = other_store.listener("x")
        listener.drain()
        store.add_jobs([make_job("mine")])
        store.notify()
        assert not ready(listener, 0.3)                   # another schema's channel stays quiet
        assert other_store.list_jobs() == [] and nonzero(other_store.counts()) == {}
        assert other_store.claim(worker(), 30) is None
        other_store.add_jobs([make_job("mine")])          # the same id is fine in another schema
        listener.close()
    finally:
        other.cleanup()


def test_pg_counting_never_waits_for_another_transaction(pg):
    """A transaction that claimed and is still open must not block another claim (no hot counter row)."""
    first, second = pg.store(), pg.store()
    first.add_jobs([make_job("h1"), make_job("h2")])
    holding, release = threading.Event(), threading.Event()

    def claim_and_hold(tx):
        job = first._claim(tx, worker(1), 30)
        holding.set()
        release.wait(60)
        return job

    thread = threading.Thread(target=lambda: first._write(claim_and_hold))
    thread.start()
    try:
        assert holding.wait(5)
        job = second.claim(worker(2), 30)
        # the claim returned while the first transaction was still open (waiting, it would have
        # returned only once that transaction ended: no time bound needed)
        assert job.id == "h2" and thread.is_alive() and not release.is_set()
        second.finish(job.id, job.lease.token, attempt(job), Transition("completed", time.time()))
    finally:
        release.set()
        thread.join(10)
    assert nonzero(second.counts()) == nonzero(tally(second)) == {"processing": 1, "completed": 1}


def test_pg_reconnects_after_losing_its_connection(pg):
    store = pg.store()
    store.add_jobs([make_job("r1"), make_job("r2")])
    pid = store._connection().info.backend_pid
    pg_execute("SELECT pg_terminate_backend(%s)", (pid,))
    job = store.claim(worker(), 30)                        # reconnects and retries, transparently
    assert job.id == "r1" and store._connection().info.backend_pid != pid
    listener = store.listener("r")
    pg_execute("SELECT pg_terminate_backend(%s)", (listener.conn.info.backend_pid,))
    assert ready(listener, 2.0)                           # a dead LISTEN connection wakes the worker
    listener.drain()
    assert ready(listener, 2.0)                           # reconnected: look for missed work once
    listener.drain()
    assert not ready(listener, 0.2)
    pg.store().notify()
    assert ready(listener, 2.0)
    listener.close()


def test_pg_unreachable_server_honours_lock_timeout(tmp_path):
    require_pg()
    config = tmp_path / "config.yaml"
    config.write_text("db: postgresql://postgres@127.0.0.1:1/test\nlock-timeout: 0.5\n")
    queue = Queue.open(config=str(config), env={})
    started = time.monotonic()
    with pytest.raises(QueueError, match="unavailable for"):
        queue.store
    assert 0.4 < time.monotonic() - started < 20        # gave up (at 0.5 s; room for a loaded machine)
    config.write_text(f"db: {PG_URL.rsplit('/', 1)[0]}/no_such_database_qt\nlock-timeout: 30\n")
    started = time.monotonic()
    with pytest.raises(QueueError, match="does not exist"):
        Queue.open(config=str(config), env={}).store       # a permanent error fails at once
    assert time.monotonic() - started < 20                  # not the 30 s lock-timeout


def test_pg_schema_setting_is_validated(tmp_path):
    config = tmp_path / "config.yaml"
    for bad in ("Upper", "pg_x", "a-b", "1abc", "x" * 49):
        config.write_text(f"db: {PG_URL}\npg-schema: {bad}\n")
        with pytest.raises(QueueError, match="pg-schema"):
            Queue.open(config=str(config), env={})


def test_pg_psycopg_is_imported_lazily_and_missing_says_what_to_install(tmp_path):
    code = ("import sys; from queuectl import Queue; q = Queue.open(env={}, db='queue.db'); q.store; "
            "assert 'psycopg' not in sys.modules, 'psycopg imported without PostgreSQL'; "
            "sys.modules['psycopg'] = None; "
            f"q = Queue.open(env={{}}, db={PG_URL!r}); q.store")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_DATA_HOME": str(tmp_path)})
    assert "psycopg imported" not in proc.stderr
    assert "QueueError: the PostgreSQL backend needs psycopg 3: pip install 'queuectl[postgres]'" in proc.stderr


def test_pg_lock_waits_honour_lock_timeout(pg):
    """A row held by a stuck transaction: a command gives up with StoreBusy after lock-timeout."""
    import psycopg

    store = pg.store(**{"lock-timeout": 1.5})
    store.add_jobs([make_job("locked")])
    with psycopg.connect(PG_URL) as holder:              # a transaction left open on the job's row
        holder.execute(f'SELECT 1 FROM "{pg.schema}".jobs WHERE id = %s FOR UPDATE', ("locked",))
        started = time.monotonic()
        with pytest.raises(StoreBusy, match="locked by another process"):
            store.retry_job("locked", ("pending",))
        assert 1.4 < time.monotonic() - started < 20     # gave up (at 1.5 s; room for a loaded machine)
        assert store.claim(worker(), 30) is None          # the claim skips the locked row, it does not wait
        store.lock_timeout = None                         # a worker waits it out
        releaser = threading.Timer(1.5, holder.rollback)
        releaser.start()
        assert store.renew("locked", 0, 30) is False
        releaser.join()
    assert store.claim(worker(), 30).id == "locked"


def test_retry_is_refused_when_a_dependency_was_purged(backend):
    store = backend.store()
    store.add_jobs([make_job("base")])
    assert store.cancel_job("base") == "cancelled"
    store.add_jobs([make_job("child", after=["base"])])
    assert store.get_job("child").state == "dead"
    assert store.purge(("cancelled",), time.time() + 60) == 1
    with pytest.raises(Conflict, match="'base', which was purged before it completed"):
        store.retry_job("child", ("dead",))
    assert store.get_job("child").state == "dead"


# --- live output -----------------------------------------------------------------------------------


def test_live_output_chunks_trim_and_expire(backend):
    store = backend.store()
    store.add_jobs([make_job("live")])
    job = store.claim(worker(), 30)
    store.append_output("live", job.attempts, [("stdout", 0, b"head"), ("stderr", 0, b"E")],
                        {"stdout": (4, 4), "stderr": (1, 1)})
    first = store.output_chunks("live", job.attempts, 0)
    assert [(s, o, d) for _, s, o, d in first] == [("stdout", 0, b"head"), ("stderr", 0, b"E")]
    # the cap: the head is 4 bytes; the tail now starts at 10, so the chunk at 4..8 is dropped, 8..12 kept
    store.append_output("live", job.attempts, [("stdout", 4, b"mid1"), ("stdout", 8, b"tail")],
                        {"stdout": (4, 4)})
    store.append_output("live", job.attempts, [("stdout", 12, b"end")], {"stdout": (4, 10)})
    later = store.output_chunks("live", job.attempts, first[-1][0])
    assert [(o, d) for _, _, o, d in later] == [(8, b"tail"), (12, b"end")]
    assert later[0][0] > first[-1][0]                    # the cursor only moves forward
    assert store.expire_output(0.0) == 0                 # the attempt still runs: nothing expires
    run(store, job)
    assert len(store.output_chunks("live", job.attempts, 0)) == 4     # kept for followers a while
    assert store.expire_output(3600) == 0
    time.sleep(0.05)
    assert store.expire_output(0.01) == 4
    assert store.output_chunks("live", job.attempts, 0) == []


def test_output_listener_wakes_on_output(backend):
    store = backend.store()
    listener = store.output_listener()
    if listener is None:
        assert backend.kind == "sqlite"                  # SQLite followers poll an indexed read
        return
    try:
        listener.drain()
        store.add_jobs([make_job("loud")])
        job = store.claim(worker(), 30)
        backend.store().append_output("loud", job.attempts, [("stdout", 0, b"x")], {"stdout": (1, 1)})
        assert ready(listener, 2.0)
    finally:
        listener.close()


# --- the dashboard's reads: counters per queue, the per-minute ring, keyset pages ----------------------


def test_attempt_summaries_leave_the_output_out_and_say_its_size(backend, monkeypatch):
    """The dashboard's list of attempts: the newest ``limit`` between two numbers, newest first, with
    the sizes of their output and not the output; Queue.attempt_list gives the same from a store
    without the (optional) method, and adds the running attempt."""
    queue = backend.open()
    store = queue.store
    store.add_jobs([make_job("many", max_retries=10)])
    for n in range(1, 6):
        job = store.claim(worker(), 30)
        failed = attempt(job, "failed", stdout=b"o" * (1000 * n), stderr=b"\xff" * n)
        assert store.finish(job.id, job.lease.token, failed, Transition("failed", time.time()))[0] is not None
    rows = store.attempt_summaries("many", 1, 5, 2)
    assert [(a.attempt, a.stdout, a.stderr, out, err) for a, out, err in rows] == [
        (4, b"", b"", 4000, 4), (3, b"", b"", 3000, 3)]
    whole = {a.attempt: a for a in store.attempts("many")}
    assert [a.to_dict() | {"stdout": "", "stderr": ""} for a, _, _ in rows] == \
        [whole[n].to_dict() | {"stdout": "", "stderr": ""} for n in (4, 3)]
    running = store.claim(worker(), 30)
    listed = queue.attempt_list("many", after=2, limit=2)
    assert [(a["attempt"], a["running"], a["stdout_bytes"]) for a in listed] == [
        (4, False, 4000), (5, False, 5000), (6, True, None)]
    assert "stdout" not in listed[0] and listed[2]["worker"] == running.lease.owner
    monkeypatch.delattr(type(store), "attempt_summaries")         # a third-party store without it
    fallback = queue.attempt_list("many", after=2, limit=2)
    assert fallback[:2] == listed[:2] and fallback[2]["attempt"] == 6      # (a running duration grows)


def finish_as(store, job: Job, outcome: str, duration: float, finished: float, state: str):
    a = Attempt(job.id, job.attempts, outcome, started_at=finished - duration, finished_at=finished,
                exit_code=0 if outcome == "succeeded" else 1)
    done, _ = store.finish(job.id, job.lease.token, a, Transition(state, time.time()))
    assert done is not None


def queue_tally(store) -> dict:
    out: dict = {}
    for job in store.list_jobs():
        out.setdefault(job.queue, {})
        out[job.queue][job.state] = out[job.queue].get(job.state, 0) + 1
    return out


def test_queue_counts_follow_every_change(backend):
    store = backend.store()
    store.add_jobs([make_job(f"a{i}", queue="alpha") for i in range(5)] +
                   [make_job(f"b{i}", queue="beta") for i in range(3)])
    assert store.queue_counts() == {"alpha": {"pending": 5}, "beta": {"pending": 3}}
    job = store.claim(worker(), 30)
    finish_as(store, job, "failed", 0.2, time.time(), "dead")
    store.cancel_job("b1")
    store.retry_job(job.id, ("dead",))
    store.add_jobs([make_job("dep", queue="beta", after=["b1"])])      # dead at once: b1 is cancelled
    store.purge(("cancelled",), time.time() + 1)
    assert store.queue_counts() == queue_tally(store)
    assert backend.store().queue_counts() == queue_tally(store)        # stored, not cached
    assert sum(sum(s.values()) for s in store.queue_counts().values()) == sum(nonzero(store.counts()).values())


def test_oldest_pending_and_run_totals(store):
    store.add_jobs([make_job("old", queue="q1"), make_job("new", queue="q1"), make_job("solo", queue="q2")])
    time.sleep(0.05)
    ages = store.oldest_pending()
    assert set(ages) == {"q1", "q2"} and all(0 < age < 60 for age in ages.values())
    assert store.run_totals() == {"runs": 0, "failed": 0, "duration_sum": 0.0, "histogram": []}
    first = store.claim(worker(), 30)
    finish_as(store, first, "succeeded", 0.5, time.time(), "completed")
    second = store.claim(worker(), 30)
    finish_as(store, second, "failed", 2.0, time.time(), "dead")
    totals = store.run_totals()
    assert (totals["runs"], totals["failed"]) == (2, 1)
    assert abs(totals["duration_sum"] - 2.5) < 1e-6
    assert sum(n for _, n in totals["histogram"]) == 2


def test_series_rolls_attempts_up_per_minute_over_a_day(store):
    now = time.time()
    store.add_jobs([make_job(f"s{i}") for i in range(6)])
    # (seconds ago, outcome, duration): two an hour old are out of the hour but in the day;
    # one from more than a day ago shares a ring slot with a recent minute and must not count
    plan = [(1500 + 86400, "succeeded", 1.0), (30, "succeeded", 0.1), (30, "failed", 0.4), (30, "succeeded", 3.0),
            (5400, "failed", 1.0), (5400, "succeeded", 1.0)]
    for ago, outcome, duration in plan:
        job = store.claim(worker(), 30)
        finish_as(store, job, outcome, duration, now - ago, "completed" if outcome == "succeeded" else "dead")
    hour = store.series(3600, 60)
    assert len(hour) in (61, 62) and [p["t"] for p in hour] == sorted(p["t"] for p in hour)
    busy = [p for p in hour if p["runs"]]
    assert len(busy) == 1 and (busy[0]["runs"], busy[0]["failed"]) == (3, 1)
    assert busy[0]["t"] <= now - 30 < busy[0]["t"] + 60
    assert 0.3 < busy[0]["p50"] < 0.5 and 2.5 < busy[0]["p99"] < 3.6     # log buckets: within ~20%
    day = store.series(86400, 900)
    assert sum(p["runs"] for p in day) == 5 and sum(p["failed"] for p in day) == 2
    assert all(p["p50"] is None for p in day if not p["runs"])


def page_all(store, **filters) -> list[str]:
    seen, before = [], None
    while True:
        page = store.page_jobs(before=before, limit=7, **filters)
        seen += [j.id for j in page["jobs"]]
        if page["next"] is None:
            return seen
        before = page["next"]


@pytest.mark.parametrize("budget", [20000, 5])
def test_job_pages_go_newest_first_through_every_filter(store, budget, monkeypatch):
    monkeypatch.setattr("queuectl.builtin._rows.SCAN_BUDGET", budget)     # 5: pages that stop early go on
    jobs = [make_job(f"j{i:02d}", command=f"echo {'needle' if i % 5 == 0 else 'hay'} {i}",
                     queue="odd" if i % 2 else "even") for i in range(30)]
    store.add_jobs(jobs)
    for _ in range(4):
        job = store.claim(worker(), 30)
        finish_as(store, job, "failed", 0.1, time.time(), "dead")
    by_id = {j.id: j for j in store.list_jobs()}
    newest_first = [j.id for j in reversed(jobs)]

    def expect(pred):
        return [i for i in newest_first if pred(by_id[i])]

    assert page_all(store) == newest_first
    assert page_all(store, state="dead") == expect(lambda j: j.state == "dead") and len(expect(lambda j: j.state == "dead")) == 4
    assert page_all(store, queue="odd") == expect(lambda j: j.queue == "odd")
    assert page_all(store, queue="even", state="pending") == expect(lambda j: j.queue == "even" and j.state == "pending")
    assert page_all(store, text="needle") == expect(lambda j: "needle" in j.command)
    assert page_all(store, text="j1") == expect(lambda j: j.id.startswith("j1"))
    assert page_all(store, text="needle", queue="even", state="pending") == \
        expect(lambda j: "needle" in j.command and j.queue == "even" and j.state == "pending")
    assert page_all(store, text="%") == [] and page_all(store, text="_") == []     # no wildcards


def test_a_version_4_store_gets_its_counters_and_series_on_migration(backend):
    """A store from before the dashboard: jobs per queue and the last day's attempts are rolled up once."""
    create_old_store(backend, 4)
    now = time.time()
    for i, (queue, state) in enumerate([("q1", "pending"), ("q1", "dead"), ("q2", "completed")]):
        backend.raw("INSERT INTO {s}jobs (id, command, state, max_retries, created_at, updated_at, run_at, queue) "
                    "VALUES (%s, 'true', %s, 3, 1, 1, 1, %s)", (f"v2-{i}", state, queue))
    for i, (ago, outcome) in enumerate([(120, "succeeded"), (120, "failed"), (2 * 86400, "succeeded")]):
        backend.raw("INSERT INTO {s}attempts (job_id, attempt, outcome, started_at, finished_at) "
                    "VALUES (%s, 1, %s, %s, %s)", (f"v2-{i}", outcome, now - ago - 1, now - ago))
    store = backend.store()
    assert store.describe()["schema_version"] == latest_schema(backend)
    assert store.queue_counts() == {"q1": {"pending": 1, "dead": 1}, "q2": {"completed": 1}}
    hour = store.series(3600, 60)
    assert sum(p["runs"] for p in hour) == 2 and sum(p["failed"] for p in hour) == 1


def test_a_sqlite_version_5_store_keeps_its_totals_counts_and_series_on_migration(tmp_path):
    """Schema 6 folds state_counts into queue_counts and run_stats and duration_hist into run_series:
    what `stats`, `status` and the dashboard read is the same before and after, and goes on adding up."""
    backend = Backend("sqlite", tmp_path)
    create_old_store(backend, 5)
    now = time.time()
    jobs = [("q1", "completed", "succeeded", 0.1), ("q1", "dead", "failed", 0.4), ("q2", "completed", "succeeded", 3.0)]
    for i, (queue, state, outcome, duration) in enumerate(jobs):
        backend.raw("INSERT INTO jobs (id, command, state, max_retries, created_at, updated_at, run_at, queue) "
                    "VALUES (?, 'true', ?, 3, 1, 1, 1, ?)", (f"v5-{i}", state, queue))
        backend.raw("INSERT INTO attempts (job_id, attempt, outcome, started_at, finished_at) VALUES (?, 1, ?, ?, ?)",
                    (f"v5-{i}", outcome, now - 100 - duration, now - 100))
    backend.raw("INSERT INTO jobs (id, command, state, max_retries, created_at, updated_at, run_at, queue) "
                "VALUES ('v5-new', 'true', 'pending', 0, 1, 1, 1, 'q2')")
    # the counters as schema 5's code kept them (its writes, by hand)
    backend.raw("INSERT INTO state_counts VALUES ('completed', 2), ('dead', 1), ('pending', 1)")
    backend.raw("INSERT INTO queue_counts VALUES ('q1', 'completed', 1), ('q1', 'dead', 1), ('q2', 'completed', 1), "
                "('q2', 'pending', 1)")
    from queuectl.builtin._rows import bucket, series_row
    for _, _, outcome, duration in jobs:
        backend.raw("INSERT INTO duration_hist VALUES (?, 1) ON CONFLICT(bucket) DO UPDATE SET n = n + 1",
                    (bucket(duration),))
        a = Attempt("x", 1, outcome, started_at=now - 100 - duration, finished_at=now - 100)
        backend.raw("INSERT INTO run_series VALUES (?, ?, ?, ?, ?)", series_row(a))
    backend.raw("UPDATE run_stats SET total_runs = 3, failed_runs = 1, total_duration = 3.5, first_started = ?, "
                "last_finished = ? WHERE id = 1", (now - 103.0, now - 100))

    store = backend.store()
    assert store.describe()["schema_version"] == latest_schema(backend)
    assert nonzero(store.counts()) == {"completed": 2, "dead": 1, "pending": 1}
    assert store.queue_counts() == {"q1": {"completed": 1, "dead": 1}, "q2": {"completed": 1, "pending": 1}}
    stats = store.stats()
    assert (stats["total_runs"], stats["failed_runs"], stats["completed_jobs"], stats["dead_jobs"]) == (3, 1, 2, 1)
    assert stats["avg_duration"] == pytest.approx(3.5 / 3, rel=1e-6)
    assert stats["p50_duration"] == pytest.approx(0.4, rel=0.2) and stats["p95_duration"] == pytest.approx(3.0, rel=0.2)
    assert stats["throughput"] == pytest.approx(3 / 3.0, rel=1e-3)       # 3 runs from first start to last finish
    assert sum(p["runs"] for p in store.series(3600, 60)) == 3

    job = store.claim(worker(), 30)                  # and it goes on counting, in the new layout
    assert job.id == "v5-new"
    finish_as(store, job, "failed", 0.4, time.time(), "dead")
    stats = store.stats()
    assert (stats["total_runs"], stats["failed_runs"], stats["dead_jobs"]) == (4, 2, 2)
    assert stats["avg_duration"] == pytest.approx(3.9 / 4, rel=1e-3)
    assert store.run_totals()["histogram"] == sorted(store.run_totals()["histogram"])
    assert sum(n for _, n in store.run_totals()["histogram"]) == 4
    assert nonzero(store.counts()) == nonzero(tally(store)) == {"completed": 2, "dead": 2}
    assert sum(p["runs"] for p in store.series(3600, 60)) == 4 and sum(p["failed"] for p in store.series(3600, 60)) == 2
    backend.cleanup()


def test_a_forked_child_never_uses_the_connection_it_inherited(backend):
    """A store opened before fork: the child opens its own connection (on PostgreSQL another server
    session), its finalizers say nothing on the parent's socket, and the parent's connection goes on."""
    queue = backend.open()
    queue.store.add_jobs([make_job("before")])
    session = queue.store._read("SELECT pg_backend_pid()")[0][0] if backend.kind == "postgres" else None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                      # the child: use the store, then drop everything
        code = 1
        try:
            import gc

            queue.store.add_jobs([make_job("from-child")])
            child_session = queue.store._read("SELECT pg_backend_pid()")[0][0] if backend.kind == "postgres" else 0
            queue.close()
            del queue
            gc.collect()                              # finalizers of what the child inherited run now
            os.write(write, f"{child_session}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    reported = os.read(read, 100).decode().strip()
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    if backend.kind == "postgres":
        assert int(reported) != session               # its own server session
        assert queue.store._read("SELECT pg_backend_pid()")[0][0] == session     # ours was not ended
    assert {j.id for j in queue.store.list_jobs()} == {"before", "from-child"}
    queue.store.add_jobs([make_job("after")])
    assert queue.store.get_job("after") is not None
