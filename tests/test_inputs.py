"""Inputs at the boundary (issue 10): ranges, strict JSON, total reads of stored rows, settings
that never stop a pool, a spool that never wedges, the Python API, one error line.

Each test drives the real CLI (or the real Python API) against a real store, on both backends
where the store is involved.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import PG_URL, QUEUECTL, pg_execute, require_pg, wait_until

BOTH_BACKENDS = True

LONG = "x" * 140_000          # longer than one exec argument may be (MAX_ARG_STRLEN 131072)

BAD_INPUTS = [
    ["enqueue", "--command", "x", "--delay", "99999999999999999999d"],
    ["enqueue", "--command", "x", "--max-retries", "99999999999999999999999"],
    ["enqueue", "--command", "x", "--timeout", "inf"],
    ["enqueue", "--command", "x", "--timeout", "nan"],
    ["enqueue", "--command", "x", "--priority", "1e309"],
    ["enqueue", "--command", "x", "--backoff-base", "inf"],
    ["enqueue", "--command", "x", "--run-at", "0001-01-01T00:00:00+05:00"],
    ["enqueue", '{"command": "x", "timeout": Infinity}'],
    ["enqueue", '{"command": "x", "delay": NaN}'],
    ["enqueue", '{"command": "x", "run_at": 1e300}'],
    ["enqueue", '{"command": "x", "max_retries": 1e300}'],
    ["enqueue", '{"command": "x", "priority": 99999999999999999999999}'],
    ["enqueue", '{"command": "x", "env": {"A": "a\\u0000b"}}'],
    ["enqueue", '{"command": "x\\u0000y"}'],
    ["enqueue", '{"command": "\\ud800"}'],
    ["enqueue", '{"command": "x", "cwd": "/tmp\\u0000"}'],
    ["enqueue", "[" * 50_000],
    ["list", "--offset", "99999999999999999999"],
    ["list", "--limit", "-1"],
    ["logs", "nosuch", "--attempt", "99999999999999999999"],
    ["queue", "limit", "q", "99999999999999999999999"],
    ["purge", "--state", "completed", "--older-than", "1e309"],
    ["purge", "--state", "completed", "--older-than", "99999999999999d"],
    ["worker", "start", "--count", "99999999999999999999"],
    ["config", "set", "poll-interval", "inf"],
    ["config", "set", "recovery-interval", "1e309"],
    ["config", "set", "schedule-interval", "inf"],
    ["config", "set", "lease-timeout", "nan"],
    ["config", "set", "backoff-max", "nan"],
    ["config", "set", "max-retries", "99999999999999999999999"],
    ["config", "set", "schedule-timezone", "Mars/Olympus_Mons"],
    ["schedule", "add", "never", "--cron", "0 0 30 2 *", "--command", "true"],
    ["schedule", "add", "big", "--cron", "* * * * *", "--command", "true", "--timeout", "1e400"],
]


@pytest.mark.parametrize("args", BAD_INPUTS, ids=lambda a: " ".join(a)[:60])
def test_bad_input_is_one_line_and_changes_nothing(instance, args):
    # The bad input goes through a real `queuectl` process; the store is set up and looked at
    # through the same CLI run in this process (a process start-up each would triple the cost).
    assert instance.cli("enqueue", json.dumps({"command": "true", "id": "kept"}))[0] == 0
    before = instance.cli_json("list")
    settings = instance.cli_json("config", "list")
    proc = instance.run(*args, check=False)
    assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("queuectl: error: ") and "Traceback" not in proc.stderr
    assert instance.cli_json("list") == before
    assert instance.cli_json("config", "list") == settings
    assert instance.run("config", "list", "--json").returncode == 0


def test_file_errors_name_the_line(instance, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"command": "true"}\n{"command": "caf\xe9"}\n')
    proc = instance.run("enqueue", "--file", jobs, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "queuectl: error: line 2: not UTF-8 text (byte 17 of the line)"
    jobs.write_text('{"command": "true"}\n{"command": "%s"}\n' % LONG)
    proc = instance.run("enqueue", "--file", jobs, check=False)
    assert proc.returncode == 2 and "line 2: command is 140000 bytes" in proc.stderr
    assert instance.json("list") == []


def test_an_endless_jobs_file_is_one_line_and_stores_nothing(instance):
    # A batch is read whole before it is stored: an input that never ends is cut at the cap, not read
    # until memory runs out (or for ever).
    assert instance.cli("enqueue", json.dumps({"command": "true", "id": "kept"}))[0] == 0
    before = instance.cli_json("list")
    proc = instance.run("enqueue", "--file", "/dev/zero", check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "queuectl: error: the jobs file is larger than 256 MiB: split it into batches (each is stored all or "
        "nothing, so it is read whole first)"], proc.stderr
    endless = subprocess.Popen(["yes", '{"command": "true"}'], stdout=subprocess.PIPE)
    try:
        proc = subprocess.run([*QUEUECTL, "enqueue", "--file", "-"], stdin=endless.stdout, cwd=instance.root,
                              env=instance.env, capture_output=True, text=True, timeout=120)
    finally:
        endless.stdout.close()
        endless.kill()
        endless.wait()
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "larger than 256 MiB" in proc.stderr
    assert instance.cli_json("list") == before


def test_durations_read_as_spans_of_time(instance):
    job = instance.job(instance.run("enqueue", "--command", "true", "--timeout", "10m", "--delay", "1h30m")
                       .stdout.strip())
    assert job["timeout"] == 600.0
    assert "DURATION" in instance.run("enqueue", "--help").stdout
    instance.run("config", "set", "poll-interval", "2m")
    assert instance.run("config", "get", "poll-interval").stdout.strip() == "120.0"


def _poison(instance, backend, statements):
    """Write rows the way another tool would, past every check queuectl has."""
    instance.run("init")
    if backend == "sqlite":
        with sqlite3.connect(instance.root / "queue.db") as conn:
            for sql in statements:
                conn.execute(sql.replace("{s}.", ""))
    else:
        schema = f'"{instance.config["pg-schema"]}".'
        for sql in statements:
            pg_execute(sql.replace("{s}.", schema).replace("9e999", "'Infinity'::float8"))


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in --json output")
    return json.loads(text, parse_constant=refuse)


def test_absurd_stored_rows_never_poison_a_read_or_a_worker(instance, backend):
    for job_id in ("far", "odd", "plain"):
        instance.enqueue("true", id=job_id)
    big = "9223372036854775807" if backend == "sqlite" else "2147483647"
    _poison(instance, backend, [
        f"UPDATE {{s}}.jobs SET run_at = 1e300, timeout = 9e999, env = '{{bad', max_retries = {big}, "
        f"priority = -{big}, created_at = -1e300 WHERE id = 'far'",
        f"UPDATE {{s}}.jobs SET timeout = -9e999, updated_at = 1e300, fields = '[1, 2]', after_ids = '\"x\"', "
        f"attempts = {big}, tries = -5 WHERE id = 'odd'",
    ])
    listed = strict_json(instance.run("list", "--json").stdout)
    assert {j["id"] for j in listed} == {"far", "odd", "plain"}
    assert instance.run("list").returncode == 0
    for job_id in ("far", "odd"):
        assert instance.run("show", job_id).returncode == 0
        strict_json(instance.run("show", job_id, "--json").stdout)
    strict_json(instance.run("status", "--json").stdout)
    strict_json(instance.run("stats", "--json").stdout)
    assert instance.run("status").returncode == 0 and instance.run("stats").returncode == 0
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=60) == 0, pool.stderr.read()
    assert instance.job("odd")["state"] == "completed" and instance.job("plain")["state"] == "completed"
    assert instance.job("far")["state"] == "pending"     # runnable in 9999: it waits, it does not block


def test_absurd_stored_schedules_never_poison_a_read_and_the_good_ones_fire(instance, backend):
    instance.run("config", "set", "schedule-interval", "0.1")
    instance.run("schedule", "add", "good", "--cron", "* * * * *", "--command", "true", "--missed", "once")
    instance.run("schedule", "add", "nojson", "--cron", "* * * * *", "--command", "true")
    instance.run("schedule", "add", "nocommand", "--cron", "* * * * *", "--command", "true")
    instance.run("schedule", "add", "garbage", "--cron", "* * * * *", "--command", "true")
    # written by another tool: a spec that is not JSON, one that is JSON but no job, a missed policy
    # and times of the wrong type; every tick is due (last_tick an hour back)
    hour_ago = time.time() - 3600
    _poison(instance, backend, [
        f"UPDATE {{s}}.schedules SET last_tick = {hour_ago}",
        "UPDATE {s}.schedules SET spec = '{{not json' WHERE name = 'nojson'",
        "UPDATE {s}.schedules SET spec = '{\"cwd\": 5}' WHERE name = 'nocommand'",
        "UPDATE {s}.schedules SET spec = '[1, 2]', missed = 'sometimes', cron = 'x y' WHERE name = 'garbage'",
    ])
    for args in (["schedule", "list"], ["schedule", "list", "--json"]):
        proc = instance.run(*args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    listed = {s["name"] for s in strict_json(instance.run("schedule", "list", "--json").stdout)}
    assert listed == {"good", "nojson", "nocommand", "garbage"}
    pool = instance.start_pool(1)
    try:
        wait_until(lambda: any(j["source"] == "schedule:good" for j in instance.cli_json("list")),
                   60, 0.1, "the good schedule to fire")
    finally:
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=60) == 0
    err = pool.stderr.read()
    assert "Traceback" not in err, err
    assert err.count("schedule nojson: its job is refused") == 1, err
    assert err.count("schedule nocommand: its job is refused") == 1, err
    sources = {j["source"] for j in instance.cli_json("list")}
    assert sources == {"schedule:good"}


def test_bad_stored_setting_logs_one_line_and_the_pool_keeps_running(instance, backend):
    _poison(instance, backend, [
        "INSERT INTO {s}.settings VALUES ('poll-interval', 'Infinity')",
        "INSERT INTO {s}.settings VALUES ('recovery-interval', '{{{')",
        "INSERT INTO {s}.settings VALUES ('schedule-timezone', '\"Mars/Base\"')",
        "INSERT INTO {s}.settings VALUES ('max-retries', '1e999')",
    ])
    proc = instance.run("enqueue", "--command", "true")
    assert proc.stderr.count("stored setting max-retries") == 1 and "using the default 3" in proc.stderr
    job_id = proc.stdout.strip()
    assert instance.job(job_id)["max_retries"] == 3
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=60) == 0
    err = pool.stderr.read()
    assert "Traceback" not in err and err.count("stored setting recovery-interval") == 1, err
    assert instance.job(job_id)["state"] == "completed"
    assert instance.run("config", "get", "recovery-interval").stdout.strip() == "1.0"


def test_bad_environment_setting_is_one_line(instance):
    proc = instance.run("list", env={"QUEUECTL_POLL_INTERVAL": "inf"}, check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "environment QUEUECTL_POLL_INTERVAL" in proc.stderr


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_yaml_bomb_is_refused_every_time_without_spinning(instance):
    instance.config_path.write_text(BOMB)
    past = time.time() - 3600                     # settled: the config cache would take it
    os.utime(instance.config_path, (past, past))
    for _ in range(3):
        proc = instance.run("status", check=False, timeout=20)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "alias bomb" in proc.stderr


def _spool_drop(folder, name, text):
    (folder / f".{name}").write_text(text)
    os.rename(folder / f".{name}", folder / name)


def test_spool_file_the_store_refuses_is_rejected_and_the_folder_flows(instance):
    spool = instance.root / "spool"
    spool.mkdir()
    _spool_drop(spool, "a-huge.yaml", "command: echo a\nmax_retries: 99999999999999999999999\n")
    _spool_drop(spool, "b-cycle.yaml", "- {id: p, command: 'true', after: [q]}\n"
                                       "- {id: q, command: 'true', after: [p]}\n")
    _spool_drop(spool, "c-deep.json", "[" * 50_000)
    _spool_drop(spool, "d-fine.yaml", "command: echo fine\n")
    proc = instance.run("spool", "scan", "--json")
    counts = json.loads(proc.stdout)
    assert counts["jobs"] == 1 and counts["rejected"] == 3, (counts, proc.stderr)
    rejected = sorted(p.name for p in (spool / "rejected").iterdir() if p.suffix == ".error")
    assert len(rejected) == 3 and not list((spool / "work").iterdir())


def test_spool_file_the_store_itself_refuses_is_rejected_and_the_folder_flows(instance):
    # A plugin's field check lets through a value the store cannot write (a set is not JSON):
    # the store raises something no validator named, and the file still ends in rejected/.
    (instance.plugins / "tags.py").write_text(
        "from queuectl import hookimpl\n\n\n@hookimpl\ndef queuectl_register_job_fields(register):\n"
        "    register('tags', check=lambda value: set(value), help='Tags.')\n")
    spool = instance.root / "spool"
    spool.mkdir()
    _spool_drop(spool, "a-tags.yaml", "command: 'true'\ntags: [x]\n")
    _spool_drop(spool, "b-fine.yaml", "command: echo fine\n")
    counts = json.loads(instance.run("spool", "scan", "--json").stdout)
    assert counts == dict(counts, jobs=1, rejected=1)
    (error,) = (spool / "rejected").glob("*.error")
    assert "a-tags.yaml: refused: TypeError" in error.read_text()
    assert [j["command"] for j in instance.json("list")] == ["echo fine"]


def test_python_api_refuses_bad_input_with_queue_errors(tmp_path):
    from queuectl import Queue
    from queuectl.errors import QueueError

    (tmp_path / "config.yaml").write_text("db: queue.db\n")
    with Queue.open(config=str(tmp_path / "config.yaml"), env={}) as queue:
        queue.enqueue(command="true", id="done1")
        calls = [
            lambda: queue.purge(["completed"], -1),
            lambda: queue.purge(["completed"], float("inf")),
            lambda: queue.purge("completed", 10),
            lambda: queue.set_queue("q", concurrency="lots"),
            lambda: queue.set_queue("q", concurrency=2 ** 70),
            lambda: queue.set_queue("q", paused="yes"),
            lambda: queue.set_queue(None),
            lambda: queue.enqueue_many(None),
            lambda: queue.enqueue_many("echo hi"),
            lambda: queue.enqueue("echo hi"),
            lambda: queue.enqueue(command="true", timeout=float("nan")),
            lambda: queue.enqueue(command="true", delay=1e300),
            lambda: queue.enqueue(command="true", env={"A": None}),
            lambda: queue.list(limit=-1),
            lambda: queue.list(offset="x"),
            lambda: queue.attempts("done1", 0),
            lambda: queue.get(None),
            lambda: queue.cancel(5),
            lambda: queue.retry("done1", ("pending",)),
            lambda: queue.config_set("poll-interval", float("inf")),
            lambda: queue.config_set("max-retries", 2 ** 64),
        ]
        for index, call in enumerate(calls):
            with pytest.raises(QueueError):
                call()
        assert [j.id for j in queue.list()] == ["done1"]
        assert queue.config.get("poll-interval") == 1.0


def test_refused_postgresql_connection_fails_a_command_promptly(tmp_path):
    require_pg()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    started = time.monotonic()
    proc = subprocess.run([*QUEUECTL, "--db", "postgresql://postgres@127.0.0.1:1/test", "list"], cwd=tmp_path,
                          env=dict(env, XDG_DATA_HOME=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "unavailable" in proc.stderr
    assert time.monotonic() - started < 30      # not the 60 s lock-timeout; the bound is loose for slow machines


def test_a_bad_setting_in_a_postgresql_url_fails_at_once_and_a_pool_does_not_wait_for_it(tmp_path):
    # libpq checks a URL's setting values only when it connects ("invalid sslmode value"): that is the
    # user's typo, not an outage, so neither a command (for lock-timeout) nor a pool (for ever) retries it.
    require_pg()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env.update(XDG_DATA_HOME=str(tmp_path), QUEUECTL_LOCK_TIMEOUT="30")
    for value in ("sslmode=bogus", "target_session_attrs=bogus", "gssencmode=bogus"):
        url = f"{PG_URL}?{value}"
        for args in (["list"], ["worker", "start", "--burst"]):
            started = time.monotonic()
            proc = subprocess.run([*QUEUECTL, "--db", url, *args], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, (args, proc.stderr)
            assert proc.stderr.startswith(f"queuectl: error: store {url} (pg-schema queuectl): ") and \
                "bogus" in proc.stderr and "retrying" not in proc.stderr, proc.stderr
            assert time.monotonic() - started < 20, args      # not the 30 s lock-timeout; loose for slow machines


def test_locked_store_is_one_line(instance, backend):
    """Another process holds the store locked past lock-timeout: one error line, exit 1."""
    instance.run("init")
    instance.write_config(dict(instance.config, **{"lock-timeout": 3}))
    if backend == "postgres":
        import psycopg

        holder = psycopg.connect(PG_URL)                  # a transaction left open, holding the jobs table
        holder.execute(f'LOCK TABLE "{instance.config["pg-schema"]}".jobs IN ACCESS EXCLUSIVE MODE')
    else:
        holder = sqlite3.connect(instance.root / "queue.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = instance.run("enqueue", "--command", "true", check=False)
    finally:
        holder.close()
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "stayed locked" in proc.stderr
    assert instance.json("list") == [], "the refused enqueue added nothing"


def test_whole_pool_killed_leaves_no_workers_in_status_and_stop_says_so(instance):
    started = instance.root / "started"
    instance.enqueue(f"touch {started}; sleep 30")
    pool = instance.start_pool(2)
    wait_until(started.exists, message="the job to start")
    wait_until(lambda: len(instance.cli_json("status")["workers"]) >= 3, message="the pool's rows")
    os.killpg(pool.pid, signal.SIGKILL)
    pool.wait()
    assert instance.json("status")["workers"] == []
    assert "workers: 0" in instance.run("status").stdout
    assert instance.run("worker", "stop").stdout.strip() == "no pool is running"


def test_retries_left_counts_retries_not_runs(instance):
    job_id = instance.enqueue("false", max_retries=3)
    assert instance.job(job_id)["retries_left"] == 3
    instance.run("config", "set", "backoff-scale", "100")     # the retry waits: we look at it in between
    pool = instance.start_pool(1)
    job = instance.wait_for_state(job_id, "failed")
    assert job["attempts"] == 1 and job["retries_left"] == 3
    os.killpg(pool.pid, signal.SIGTERM)
    pool.wait(timeout=60)
