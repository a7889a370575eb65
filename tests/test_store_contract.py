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
import uuid

import pytest

from queuectl import Queue
from queuectl.errors import Conflict, QueueError, SchemaError, StoreBusy
from queuectl.models import Attempt, Job
from queuectl.store import Transition, WorkerInfo

PG_URL = os.environ.get("QUEUECTL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
BACKENDS = ["sqlite", "postgres"]


def pg_unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"PostgreSQL is required under CI: {reason}")
    pytest.skip(reason)


def require_pg():
    """psycopg and a reachable server, or skip (fail under CI)."""
    try:
        import psycopg
    except ImportError:
        pg_unavailable("psycopg is not installed (pip install 'queuectl[postgres]')")
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pg_unavailable(f"PostgreSQL at {PG_URL} is unreachable: {str(exc).strip().splitlines()[0]}")
    return psycopg


def pg_execute(sql: str, params=()):
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


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


def test_init_is_idempotent_and_described(backend):
    store = backend.store()
    store.init()
    store.init()
    info = store.describe()
    assert info["backend"] in ("sqlite", "postgresql")
    assert info["schema_version"] == 1
    assert backend.store().describe()["schema_version"] == 1      # a second handle finds it ready


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


def test_failed_job_waits_for_its_run_at(store):
    store.add_jobs([make_job("w")])
    job = store.claim(worker(), 30)
    store.finish(job.id, job.lease.token, attempt(job, "failed"), Transition("failed", time.time() + 0.6, "boom"))
    assert store.claim(worker(), 30) is None
    assert 0 < store.next_run_at() - time.time() <= 0.7
    time.sleep(0.7)
    again = store.claim(worker(), 30)
    assert (again.id, again.attempts, again.tries) == ("w", 2, 2)


# --- leases and fencing ------------------------------------------------------------------------


def test_leases_expire_by_the_store_clock(store):
    store.add_jobs([make_job("e1"), make_job("e2")])
    short = store.claim(worker(1), 0.5)
    store.claim(worker(2), 30)
    leases = {j.id: j.lease for j in store.leases()}
    assert set(leases) == {"e1", "e2"} and not leases["e1"].expired and not leases["e2"].expired
    time.sleep(0.8)
    leases = {j.id: j.lease for j in store.leases()}
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
        release.wait(10)
        return job

    thread = threading.Thread(target=lambda: first._write(claim_and_hold))
    thread.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        job = second.claim(worker(2), 30)
        assert job.id == "h2" and time.monotonic() - started < 1.0
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
    assert 0.4 < time.monotonic() - started < 5
    config.write_text(f"db: {PG_URL.rsplit('/', 1)[0]}/no_such_database_qt\nlock-timeout: 30\n")
    started = time.monotonic()
    with pytest.raises(QueueError, match="does not exist"):
        Queue.open(config=str(config), env={}).store       # a permanent error fails at once
    assert time.monotonic() - started < 5


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
        assert 1.4 < time.monotonic() - started < 5
        assert store.claim(worker(), 30) is None          # the claim skips the locked row, it does not wait
        store.lock_timeout = None                         # a worker waits it out
        releaser = threading.Timer(1.5, holder.rollback)
        releaser.start()
        assert store.renew("locked", 0, 30) is False
        releaser.join()
    assert store.claim(worker(), 30).id == "locked"
