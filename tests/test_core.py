"""The core through the Python API, with a recording plugin registered like any other."""
import sqlite3

import pytest

from queuectl import JobValidationError, Queue, RetryDecision, hookimpl
from queuectl.config import Setting, integer
from queuectl.errors import Conflict, PluginError, SchemaError, UsageError
from queuectl.worker import Worker


class Recorder:
    """A test plugin: records every hook call it receives."""

    def __init__(self):
        self.calls = []

    @hookimpl
    def queuectl_register_job_fields(self, register):
        register("owner", check=lambda v: str(v).lower(), help="Who to ask about the job.")

    @hookimpl
    def queuectl_register_settings(self, register):
        register(Setting("give-up-on", 64, integer(0), "Exit code that is never retried."))

    @hookimpl
    def queuectl_validate_job(self, job, queue):
        self.calls.append(("validate", dict(job)))
        if job["command"] == "forbidden":
            raise JobValidationError("forbidden command")

    @hookimpl
    def queuectl_retry_decision(self, job, attempt, queue):
        if attempt.exit_code == queue.config.get("give-up-on"):
            return RetryDecision(False, reason="not retryable")

    @hookimpl
    def queuectl_attempt_started(self, job, attempt):
        self.calls.append(("started", job.id, attempt))

    @hookimpl
    def queuectl_attempt_finished(self, job, attempt):
        self.calls.append(("finished", job.id, attempt.attempt, attempt.outcome, job.state))

    @hookimpl
    def queuectl_job_dead(self, job, attempt):
        self.calls.append(("dead", job.id, attempt.attempt))


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def rqueue(tmp_path, recorder):
    (tmp_path / "config.yaml").write_text("db: queue.db\nbackoff-scale: 0.01\npoll-interval: 0.05\n")
    q = Queue.open(config=str(tmp_path / "config.yaml"), plugins=[("recorder", recorder)], env={})
    yield q
    q.close()


def names(calls, kind):
    return [c for c in calls if c[0] == kind]


def test_every_enqueue_path_goes_through_the_validator(rqueue, recorder):
    rqueue.enqueue(command="echo a", owner="ALICE")
    rqueue.enqueue({"command": "echo b", "id": "b"})
    rqueue.enqueue_many([{"command": "echo c"}, {"command": "echo d"}])
    assert [c[1]["command"] for c in names(recorder.calls, "validate")] == ["echo a", "echo b", "echo c", "echo d"]
    job = rqueue.list()[0]
    assert job.fields == {"owner": "alice"} and job.to_dict()["owner"] == "alice"
    assert rqueue.get("b").source == "python"


def test_a_refused_job_in_a_batch_stores_nothing(rqueue):
    with pytest.raises(JobValidationError, match="forbidden command"):
        rqueue.enqueue_many([{"command": "echo fine"}, {"command": "forbidden"}])
    with pytest.raises(Conflict, match="'x' already exists"):
        rqueue.enqueue_many([{"command": "true", "id": "x"}, {"command": "true", "id": "x"}])
    assert rqueue.list() == []


def test_a_validator_registered_or_unregistered_later_is_seen_at_the_next_job(rqueue):
    class Late:
        seen: list = []

        @hookimpl
        def queuectl_validate_job(self, job):      # takes only some of the hook's arguments
            self.seen.append(job["command"])
            if job["command"] == "late":
                raise JobValidationError("the late validator refuses it")

    rqueue.enqueue_many([{"command": "early"}])
    late = Late()
    rqueue.pm.register(late, name="late")
    rqueue.enqueue_many([{"command": "a"}, {"command": "b"}])
    with pytest.raises(JobValidationError, match="the late validator refuses it"):
        rqueue.enqueue_many([{"command": "c"}, {"command": "late"}])
    rqueue.pm.unregister(late)
    rqueue.enqueue_many([{"command": "late"}])
    assert Late.seen == ["a", "b", "c", "late"]
    assert [j.command for j in rqueue.list()] == ["early", "a", "b", "late"]


def test_a_validator_that_breaks_is_one_line_naming_it_and_stores_nothing(rqueue):
    class Broken:
        @hookimpl
        def queuectl_validate_job(self, job, queue):
            if job["command"] == "boom":
                raise KeyError("oops")

    rqueue.pm.register(Broken(), name="brittle")
    with pytest.raises(PluginError) as caught:
        rqueue.enqueue_many([{"command": "fine"}, {"command": "boom"}])
    assert str(caught.value).startswith("plugin brittle failed in queuectl_validate_job: KeyError: 'oops'")
    assert "\n" not in str(caught.value) and rqueue.list() == []


MIXED = [
    {"command": "true"},
    {"command": "echo env", "env": {"A": "1", "B": 2}},
    {"command": "true"},
    {"command": "echo labels", "labels": {"team": "ops"}, "priority": 3, "queue": "mail"},
    {"argv": ["printf", "%s\n", "a b"], "timeout": "1m"},
    {"command": "echo unique", "unique_key": "k1", "max_retries": 0},
    {"command": "true", "cwd": "/", "delay": 60},
    {"command": "echo dep", "after": ["dep"]},
    {"command": "true", "labels": {}, "env": {}},
    {"command": "echo last"},
]


def test_a_batch_of_mixed_jobs_stores_each_as_one_at_a_time_does(queue):
    # SQLite inserts each run of rows with the same NULL columns by its own statement: a batch that
    # mixes them must store exactly what enqueueing the jobs one by one stores.
    import dataclasses

    queue.enqueue(command="true", id="dep")
    batch = queue.enqueue_many([dict(spec, id=f"b{n}") for n, spec in enumerate(MIXED)])
    singles = [queue.enqueue(dict(spec, id=f"s{n}", **({"unique_key": "k2"} if "unique_key" in spec else {})))
               for n, spec in enumerate(MIXED)]

    def plain(job_id: str):
        job = queue.get(job_id)
        return dataclasses.replace(job, id="", created_at=0, updated_at=0, run_at=round(job.run_at - job.created_at),
                                   unique_key=job.unique_key and "k")

    assert [plain(b) for b in batch] == [plain(s) for s in singles]
    conn = sqlite3.connect(queue.store.path)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")
               if row[1] not in ("seq", "id", "created_at", "updated_at", "run_at", "unique_key")]
    rows = {job_id: conn.execute(f"SELECT {', '.join(columns)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            for job_id in batch + singles}
    conn.close()
    assert [rows[b] for b in batch] == [rows[s] for s in singles]
    assert rows["b0"][columns.index("env")] is None and rows["b1"][columns.index("env")] == '{"A": "1", "B": "2"}'
    assert rows["b8"][columns.index("labels")] is None and rows["b4"][columns.index("timeout")] == 60.0


@pytest.mark.parametrize("spec,message", [
    ({"command": "true", "state": "completed"}, "field 'state' is set by queuectl"),
    ({"command": "true", "updated_at": 1}, "field 'updated_at' is set by queuectl"),
    ({"command": "true", "nope": 1}, "unknown field 'nope'"),
    ({"command": "   "}, "command is empty"),
    ({"command": "true", "env": {"A": [1]}}, "env value of A must be a string"),
    ({"command": "true", "priority": 1000}, "priority must be an integer from -100 to 100"),
    ({"command": "true", "timeout": -1}, "timeout must be a number above 0"),
    ({"command": "true", "id": "has space"}, "is not valid"),
    ({"command": "true", "after": ""}, "after '': an empty name in the list"),       # never "no dependency"
    ({"command": "true", "after": "a1,"}, "after 'a1,': an empty name in the list"),
    ({"command": "true", "after": "a1,,a2"}, "an empty name in the list"),
])
def test_validator_refuses(rqueue, spec, message):
    with pytest.raises(JobValidationError, match=message):
        rqueue.enqueue(spec)


def test_worker_reports_every_attempt_and_the_retry_hook_decides(rqueue, recorder):
    ok = rqueue.enqueue(command="true")
    flaky = rqueue.enqueue(command='test "$QUEUECTL_ATTEMPT" = 2', max_retries=3)
    usage = rqueue.enqueue(command="exit 64", max_retries=5)
    assert Worker(rqueue, burst=True).run() == 0
    assert rqueue.get(ok).state == "completed"
    assert rqueue.get(flaky).state == "completed" and rqueue.get(flaky).attempts == 2
    dead = rqueue.get(usage)
    assert dead.state == "dead" and dead.attempts == 1 and dead.last_error == "not retryable"
    finished = names(recorder.calls, "finished")
    assert ("finished", flaky, 1, "failed", "failed") in finished
    assert ("finished", flaky, 2, "succeeded", "completed") in finished
    assert names(recorder.calls, "dead") == [("dead", usage, 1)]
    assert len(names(recorder.calls, "started")) == len(finished) == 4


def test_queue_facade_retry_stats_and_settings(rqueue):
    job_id = rqueue.enqueue(command="exit 3", max_retries=0)
    with pytest.raises(Conflict, match="is pending, not dead"):
        rqueue.retry(job_id)
    Worker(rqueue, burst=True).run()
    assert rqueue.get(job_id).state == "dead"
    assert rqueue.retry(job_id).state == "pending"
    assert rqueue.get(job_id).tries == 0 and len(rqueue.attempts(job_id)) == 1
    stats = rqueue.stats()
    assert stats["total_runs"] == 1 and stats["failed_runs"] == 1 and stats["dead_jobs"] == 0
    assert rqueue.config_set("max_retries", "7") == 7
    assert rqueue.config.lookup("max-retries") == (7, "store")
    with pytest.raises(UsageError):
        rqueue.config_set("db", "elsewhere.db")
    assert rqueue.get(rqueue.enqueue(command="true")).max_retries == 7


def test_two_storage_backends_with_one_name_is_an_error(tmp_path):
    class Impostor:
        @hookimpl
        def queuectl_register_storage(self, register):
            register("sqlite", object)

    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(PluginError, match="storage backend 'sqlite' is registered twice"):
        Queue.open(config=str(tmp_path / "empty.yaml"), db=str(tmp_path / "q.db"), plugins=[("impostor", Impostor())],
                   env={})


def test_a_store_newer_than_the_code_is_refused(tmp_path):
    db = tmp_path / "q.db"
    config = tmp_path / "empty.yaml"
    config.write_text("")
    with Queue.open(config=str(config), db=str(db), env={}) as q:
        q.enqueue(command="true")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match="schema version 99, newer than this queuectl"):
        Queue.open(config=str(config), db=str(db), env={}).list()


def test_output_cap_keeps_head_and_tail():
    from queuectl.builtin.shell import CappedBuffer

    buf = CappedBuffer(10)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qrstuvwxyz"):
        buf.write(chunk)
    assert buf.value() == b"abcde\n[... queuectl: 16 bytes truncated ...]\nvwxyz"
    small = CappedBuffer(10)
    small.write(b"0123456789")
    assert small.value() == b"0123456789"
