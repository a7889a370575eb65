"""The store under faults: missing, deleted or replaced under a pool, damaged, or not ours.

Real files, real pools, real CLI processes; a missing store on both backends.
"""
from __future__ import annotations

import os
import sqlite3
import uuid

import pytest

from conftest import PG_URL, pg_execute, require_pg, wait_until

READS = [["list"], ["list", "--json"], ["status"], ["status", "--json"], ["show", "x"], ["stats", "--json"],
         ["logs", "x"], ["dlq", "list"], ["queue", "list"], ["schedule", "list"]]
SETTINGS = [["config", "list"], ["config", "get", "max-retries"]]   # answer from file and defaults
EVERY = READS + SETTINGS + [["enqueue", "--command", "true"], ["retry", "x"], ["cancel", "x"], ["config", "set", "timeout", "5"],
                 ["purge", "--state", "completed", "--older-than", "1d"], ["worker", "start", "--burst"],
                 ["queue", "pause", "q"], ["worker", "stop"]]


def one_error_line(proc) -> str:
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: "), proc.stderr
    return lines[0]


def test_read_commands_never_create_a_store_write_commands_do(instance):
    for args in READS:
        line = one_error_line(instance.run("--db", "tyop.db", *args, check=False))
        assert "no store at" in line and "tyop.db" in line
    assert instance.run("--db", "tyop.db", "config", "get", "max-retries").stdout.strip() == "3"
    assert "max-retries" in instance.run("--db", "tyop.db", "config", "list").stdout
    assert not [p for p in instance.root.iterdir() if p.name.startswith("tyop")], "nothing was created"
    instance.run("--db", "new.db", "init")
    assert (instance.root / "new.db").exists()
    job_id = instance.run("--db", "other.db", "enqueue", "--command", "true").stdout.strip()
    assert job_id in instance.run("--db", "other.db", "list").stdout


def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(instance):
    # `--db app.db` naming an SQLite file of another program (one with a `meta` table of its own too):
    # not a store, by every command, and the file is not touched (no queuectl tables added, its
    # journal mode kept), where a read command used to make it a store and `list` said "no jobs".
    import hashlib

    for name, schema in (("app.db", "CREATE TABLE users (name TEXT)"),
                         ("meta.db", "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")):
        path = instance.root / name
        conn = sqlite3.connect(path)
        conn.execute(schema)
        conn.commit()
        conn.close()
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        for args in EVERY + [["init"]]:
            line = one_error_line(instance.run("--db", name, *args, check=False))
            assert line == f"queuectl: error: refusing the store {path}: it is an SQLite database of another " \
                           f"program (it has tables but not queuectl's), not a queuectl store", (args, line)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before, f"{name} was changed"
        assert sorted(p.name for p in instance.root.iterdir() if p.name.startswith(name)) == [name]
    instance.run("--db", "empty.db", "init")                    # an empty file or none is made a store
    assert instance.run("--db", "empty.db", "list").stdout.strip() == "no jobs"


def test_read_commands_never_create_a_postgres_schema(tmp_path):
    require_pg()
    from conftest import Instance

    schema = f"qt_{uuid.uuid4().hex[:12]}"
    inst = Instance(tmp_path, {"db": PG_URL, "pg-schema": schema})
    try:
        for args in (["list"], ["status"], ["dlq", "list"], ["stats", "--json"]):
            assert "no store at" in one_error_line(inst.run(*args, check=False))
        assert not pg_execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,))
        inst.run("enqueue", "--command", "true")
        assert pg_execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,))
    finally:
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_store_deleted_or_replaced_under_a_pool_is_said_in_one_line(instance, how):
    db = instance.root / "queue.db"
    instance.run("init")
    log = instance.root / "pool.log"
    with open(log, "w") as err:
        pool = instance.start_pool(2, "--no-spool", stderr=err)
    wait_until(lambda: len(instance.cli_json("status")["workers"]) >= 2, message="the pool to run")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            os.unlink(f"{db}{suffix}")
    if how == "replaced":
        instance.run("init")                       # a new, empty store at the same path
    assert pool.wait(timeout=60) == 1
    text = log.read_text()
    lines = [line for line in text.splitlines() if "while in use" in line]
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: the store ") and str(db) in lines[0], text
    assert "Traceback" not in text


def damage(db) -> None:
    conn = sqlite3.connect(str(db))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = os.path.getsize(db)
    with open(db, "r+b") as fh:
        fh.seek(size // 2 // 4096 * 4096)
        fh.write(os.urandom(4096 * 4))


def test_garbage_in_the_middle_of_the_store_gives_every_command_one_line(instance):
    instance.run("enqueue", "--file", "-", input="\n".join(
        '{"command": "echo %s"}' % ("x" * 3000) for _ in range(40)))
    damage(instance.root / "queue.db")
    damaged = 0
    for args in EVERY:
        proc = instance.run(*args, check=False, timeout=120)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        if proc.returncode != 0 and args[:2] != ["worker", "start"]:
            line = one_error_line(proc)
            damaged += "is damaged" in line
        elif args[:2] == ["worker", "start"]:
            assert all(line.startswith("queuectl: ") for line in proc.stderr.splitlines()), proc.stderr
    assert damaged >= 2, "the damage was seen"


def test_a_store_owned_by_another_user_or_writable_by_others_is_refused(instance):
    db = instance.root / "queue.db"
    instance.run("init")
    for change, words in ((lambda: os.chmod(db, 0o666), "other users can write it"),
                          (lambda: os.chmod(db, 0o602), "other users can write it"),
                          (lambda: os.chown(db, 4321, -1), "owned by another user (uid 4321)")):
        if os.geteuid() != 0 and "owned" in words:
            continue
        change()
        for args in (["list"], ["enqueue", "--command", "id"], ["worker", "start", "--burst"]):
            line = one_error_line(instance.run(*args, check=False))
            assert "refusing the store" in line and words in line, line
        os.chmod(db, 0o600)
        if os.geteuid() == 0:
            os.chown(db, 0, -1)
    assert instance.run("list").returncode == 0


def test_a_foreign_wal_file_is_refused_too(instance):
    instance.run("init")
    wal = instance.root / "queue.db-wal"
    if not wal.exists():
        wal.write_bytes(b"")
    os.chmod(wal, 0o666)
    line = one_error_line(instance.run("list", check=False))
    assert "queue.db-wal" in line and "other users can write it" in line

