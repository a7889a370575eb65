"""The built-in PostgreSQL storage backend: several hosts, one database, fenced leases.

Selected by ``db: postgresql://...``. Everything lives in one schema (``pg-schema``,
default ``queuectl``), so several queues can share a database. psycopg 3 is imported
only when this backend is used (``pip install 'queuectl[postgres]'``).

* A claim is one ``UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)``:
  workers never wait for each other's claims.
* Lease times come from the database clock; absolute times a client sends (``run_at``,
  attempt times) are shifted onto the database clock by the offset measured at the
  start of the transaction, so hosts with skewed clocks still agree.
* Idle workers sleep on a LISTEN connection; ``notify()`` sends NOTIFY on a channel
  named after the schema. A slow poll covers a lost notification.
* Counters (jobs per state, run statistics, the duration histogram) are striped: each
  change takes any stripe row that no other transaction holds (``FOR UPDATE SKIP LOCKED``)
  or adds a new one, so counting never makes two transactions wait for each other, and
  a read sums the few stripes.
* Every verb survives the server going away: it reconnects with backoff and retries,
  for ever for workers (``lock_timeout`` None), else for at most ``lock_timeout``
  seconds. Writes that must not run twice (claim, finish, add_jobs, retry_job) run in a
  transaction whose id is read before COMMIT: a COMMIT whose answer was lost is resolved
  with ``txid_status``, so the write is neither lost nor applied twice. Writes that may
  run twice (renew, heartbeats, settings) are single autocommit statements.
* A lock wait gives up after one second (session ``lock_timeout``) and is retried, like
  SQLite's busy timeout: a stuck transaction makes a command fail with StoreBusy after
  ``lock_timeout`` seconds, while workers wait.
"""
from __future__ import annotations

import json
import math
import os
import re
import select
import sys
import time
from typing import Optional

from queuectl import hookimpl
from queuectl.config import Setting
from queuectl.errors import Conflict, QueueError, SchemaError, StoreBusy
from queuectl.models import DEAD, PROCESSING, Attempt, Job, Lease
from queuectl.store import Transition, WorkerInfo

SCHEMA_VERSION = 1
HIST_STEPS = 4                  # duration histogram buckets per doubling, as in the SQLite store
SCHEMA_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
RECONNECT_MAX_DELAY = 1.0       # seconds between reconnection attempts, at most
LISTENER_RETRY = 0.5            # seconds between reconnection attempts of an idle worker's LISTEN connection

#: libpq settings used unless the URL gives its own: bounded connects, a dead server found in
#: about 25 s.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "queuectl",
    "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3",
}
#: Set on every connection. A lock wait gives up after a second and is retried, the way the
#: SQLite store's busy timeout works, so lock_timeout is honoured without a SET per call; the
#: server finds a dead client in about 25 s, and a stuck client's transaction cannot hold row
#: locks for more than a minute.
SESSION_SETUP = ("SET lock_timeout = '1s'; SET idle_in_transaction_session_timeout = '60s'; "
                 "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3")
#: Connection failures that retrying cannot cure.
PERMANENT_MARKERS = ("does not exist", "authentication failed", "no password supplied", "pg_hba.conf",
                     "permission denied", "not permitted to log in", "invalid connection option",
                     "invalid URI", "invalid integer value")

# The database clock, as epoch seconds. statement_timestamp() is stable within a statement.
NOW = "extract(epoch FROM statement_timestamp())::float8"

JOB_COLUMNS = ("id, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout, "
               "source, fields, created_at, updated_at, run_at, last_error, exit_code, lease_owner, lease_host, "
               "lease_pid, lease_pid_start, lease_pgid, lease_expires, lease_token, run_id, started_at")
J_JOB_COLUMNS = ", ".join("j." + c.strip() for c in JOB_COLUMNS.split(","))
ATTEMPT_COLUMNS = ("job_id, attempt, outcome, started_at, finished_at, exit_code, signal, error, stdout, stderr, "
                   "worker, host, pid")
INSERT_COLUMNS = ("id, command, state, max_retries, priority, queue, executor, cwd, env, timeout, source, fields, "
                  "created_at, updated_at, run_at")


def _striped(table: str, key_where: str, update: str, insert: str) -> str:
    """PL/pgSQL that adds to a striped counter: any stripe no other transaction holds, else a new one."""
    return f"""
  SELECT stripe INTO k FROM {{s}}.{table} WHERE {key_where} LIMIT 1 FOR UPDATE SKIP LOCKED;
  IF FOUND THEN
    UPDATE {{s}}.{table} SET {update} WHERE {key_where} AND stripe = k;
  ELSE
    INSERT INTO {{s}}.{table} VALUES ({insert});
  END IF;"""


# "{s}" is replaced by the quoted schema name.
MIGRATIONS = {
    1: [
        """CREATE TABLE {s}.jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            command text NOT NULL,
            state text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            tries integer NOT NULL DEFAULT 0,
            max_retries integer NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            queue text NOT NULL DEFAULT 'default',
            executor text NOT NULL DEFAULT 'shell',
            cwd text, env text, timeout double precision, source text, fields text,
            created_at double precision NOT NULL, updated_at double precision NOT NULL,
            run_at double precision NOT NULL,
            last_error text, exit_code integer,
            lease_owner text, lease_host text, lease_pid integer, lease_pid_start bigint, lease_pgid integer,
            lease_expires double precision, lease_token bigint NOT NULL DEFAULT 0, run_id text,
            started_at double precision)""",
        # The claim index matches the claim's ORDER BY and holds only runnable jobs.
        "CREATE INDEX jobs_claim ON {s}.jobs (priority DESC, run_at, seq) WHERE state IN ('pending', 'failed')",
        "CREATE INDEX jobs_state ON {s}.jobs (state, seq)",
        "CREATE INDEX jobs_processing ON {s}.jobs (lease_owner) WHERE state = 'processing'",
        """CREATE TABLE {s}.attempts (
            job_id text NOT NULL, attempt integer NOT NULL, outcome text NOT NULL,
            started_at double precision NOT NULL, finished_at double precision NOT NULL,
            exit_code integer, signal integer, error text, stdout bytea, stderr bytea,
            worker text, host text, pid integer,
            PRIMARY KEY (job_id, attempt))""",
        "CREATE INDEX attempts_finished ON {s}.attempts (finished_at)",
        "CREATE TABLE {s}.settings (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE {s}.workers (
            id text PRIMARY KEY, kind text NOT NULL, host text NOT NULL, pid integer NOT NULL,
            pid_start bigint, pool_id text, started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL, stop_requested integer NOT NULL DEFAULT 0)""",
        # Receipts make a source's delivery exactly-once: recorded in the same transaction as its jobs.
        """CREATE TABLE {s}.receipts (key text PRIMARY KEY, name text, sha256 text, job_ids text NOT NULL,
            created_at double precision NOT NULL)""",
        # Striped counters: a read sums the stripes of a key; a write never waits (see _striped).
        "CREATE SEQUENCE {s}.stripes",
        """CREATE TABLE {s}.state_counts (state text NOT NULL, stripe bigint NOT NULL, n bigint NOT NULL,
            PRIMARY KEY (state, stripe))""",
        """CREATE TABLE {s}.duration_hist (bucket integer NOT NULL, stripe bigint NOT NULL, n bigint NOT NULL,
            PRIMARY KEY (bucket, stripe))""",
        """CREATE TABLE {s}.run_stats (stripe bigint PRIMARY KEY, total_runs bigint NOT NULL,
            failed_runs bigint NOT NULL, total_duration double precision NOT NULL,
            first_started double precision, last_finished double precision)""",
        "CREATE FUNCTION {s}.bump_count(p_state text, p_delta bigint) RETURNS void LANGUAGE plpgsql AS $$\n"
        "DECLARE k bigint;\nBEGIN" + _striped("state_counts", "state = p_state", "n = n + p_delta",
                                             "p_state, nextval('{s}.stripes'), p_delta") + "\nEND $$",
        "CREATE FUNCTION {s}.record_run(p_bucket integer, p_failed integer, p_duration float8, "
        "p_started float8, p_finished float8) RETURNS void LANGUAGE plpgsql AS $$\n"
        "DECLARE k bigint;\nBEGIN"
        + _striped("duration_hist", "bucket = p_bucket", "n = n + 1", "p_bucket, nextval('{s}.stripes'), 1")
        + _striped("run_stats", "true",
                   "total_runs = total_runs + 1, failed_runs = failed_runs + p_failed, "
                   "total_duration = total_duration + p_duration, "
                   "first_started = LEAST(first_started, p_started), "
                   "last_finished = GREATEST(last_finished, p_finished)",
                   "nextval('{s}.stripes'), 1, p_failed, p_duration, p_started, p_finished")
        + "\nEND $$",
        # Jobs per state, kept current by triggers: whole statements for inserts (a bulk
        # enqueue adds once per state), rows for state changes (a claim or a finish).
        """CREATE FUNCTION {s}.jobs_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT state, count(*) AS c FROM added GROUP BY state ORDER BY state LOOP
    PERFORM {s}.bump_count(r.state, r.c);
  END LOOP;
  RETURN NULL;
END $$""",
        """CREATE FUNCTION {s}.jobs_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT state, count(*) AS c FROM removed GROUP BY state ORDER BY state LOOP
    PERFORM {s}.bump_count(r.state, -r.c);
  END LOOP;
  RETURN NULL;
END $$""",
        """CREATE FUNCTION {s}.jobs_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM {s}.bump_count(OLD.state, -1);
  PERFORM {s}.bump_count(NEW.state, 1);
  RETURN NULL;
END $$""",
        """CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs REFERENCING NEW TABLE AS added
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_count_insert()""",
        """CREATE TRIGGER jobs_count_delete AFTER DELETE ON {s}.jobs REFERENCING OLD TABLE AS removed
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_count_delete()""",
        """CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON {s}.jobs FOR EACH ROW
            WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION {s}.jobs_count_update()""",
    ],
}


def schema_name(value) -> str:
    """Parse the pg-schema setting: a plain lower-case SQL identifier."""
    if not isinstance(value, str) or isinstance(value, bool):
        raise ValueError(f"expected a schema name, got {value!r}")
    value = value.strip()
    if not SCHEMA_PATTERN.match(value) or value.startswith("pg_"):
        raise ValueError(f"{value!r} is not a usable schema name: use 1-48 lower-case letters, digits and _, "
                         f"not starting with a digit or pg_")
    return value


@hookimpl
def queuectl_register_storage(register):
    register("postgres", PostgresStore, schemes=("postgresql", "postgres"))


@hookimpl
def queuectl_register_settings(register):
    register(Setting("pg-schema", "queuectl", schema_name,
                     "PostgreSQL schema holding this queue's tables (several queues can share one database).",
                     file_only=True))


def _psycopg():
    """psycopg 3, imported on first use of the backend."""
    try:
        import psycopg
        import psycopg.conninfo
        import psycopg.errors
    except ImportError:
        raise QueueError("the PostgreSQL backend needs psycopg 3: pip install 'queuectl[postgres]'") from None
    import logging

    log = logging.getLogger("psycopg")
    if not log.handlers:        # its "error ignored" warnings after a lost connection are ours to report
        log.addHandler(logging.NullHandler())
    return psycopg


def _bucket(duration: float) -> int:
    return int(math.floor(math.log2(max(duration, 1e-6) * 1e6) * HIST_STEPS))


def _bucket_value(bucket: int) -> float:
    return 2 ** ((bucket + 0.5) / HIST_STEPS) / 1e6


def _percentile(hist, total: int, q: float) -> Optional[float]:
    if not total:
        return None
    target, seen = q * total, 0
    for bucket, n in hist:
        seen += n
        if seen >= target:
            return round(_bucket_value(bucket), 6)
    return round(_bucket_value(hist[-1][0]), 6) if hist else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for messages and `queuectl status`."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class _Duplicate(Exception):
    """A job id clashed inside a write; the message is worked out after the rollback."""


class _Tx:
    """One write transaction: its cursor and the offset from this host's clock to the database's."""

    def __init__(self, cur, offset: float):
        self.cur = cur
        self.offset = offset

    def db_time(self, ts: Optional[float]) -> Optional[float]:
        return None if ts is None else ts + self.offset

    def all(self, sql: str, params=()) -> list:
        self.cur.execute(sql, params)
        return self.cur.fetchall()


class PostgresStore:
    def __init__(self, url: str, queue):
        self.pg = _psycopg()
        rest = url.split("://", 1)[1]
        self.conninfo = "postgresql://" + rest          # "postgresql+psycopg://" and "postgres://" too
        self.url = url
        self.queue = queue
        self.schema = queue.config.get("pg-schema")
        self.s = f'"{self.schema}"'
        self.channel = f'"queuectl_wake_{self.schema}"'
        self.location = f"{redact(self.conninfo)} (pg-schema {self.schema})"
        self.lock_timeout: Optional[float] = queue.config.get("lock-timeout")
        try:
            given = self.pg.conninfo.conninfo_to_dict(self.conninfo)
        except self.pg.ProgrammingError as exc:
            raise QueueError(f"invalid PostgreSQL URL {redact(url)}: {_first_line(exc)}") from None
        self.connect_args = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        self._conn = None
        self._sql = {}

    def q(self, sql: str) -> str:
        """SQL with the schema filled in (cached: statements stay identical, so they get prepared)."""
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("{s}", self.s)
        return out

    # --- connections, transactions and retries ------------------------------------------------

    def connect(self):
        conn = self.pg.connect(self.conninfo, autocommit=True, **self.connect_args)
        try:
            conn.execute(SESSION_SETUP)
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _permanent(self, exc: BaseException) -> bool:
        if getattr(exc, "sqlstate", None):
            return exc.sqlstate[:2] in ("28", "3D", "42")
        text = str(exc)
        return any(marker in text for marker in PERMANENT_MARKERS)

    def _run(self, fn, write: bool):
        """Run ``fn``, in a transaction when ``write``, else on the autocommit connection (reads, and
        single statements that can safely be applied twice); reconnect and retry through outages,
        lock waits and deadlocks. Workers (lock_timeout None) wait for ever; commands give up
        after lock_timeout seconds.
        """
        start = time.monotonic()
        delay, warned = 0.02, False
        while True:
            try:
                conn = self._connection()
                result = self._transaction(conn, fn) if write else fn(conn.cursor())
                if warned:
                    print(f"queuectl: store {self.location} is back after {time.monotonic() - start:.1f} s",
                          file=sys.stderr, flush=True)
                return result
            except (self.pg.OperationalError, self.pg.InterfaceError,
                    self.pg.errors.ReadOnlySqlTransaction) as exc:     # the last: a failover under way
                if self._conn is not None and (self._conn.closed or self._conn.broken or
                                               isinstance(exc, self.pg.errors.ReadOnlySqlTransaction)):
                    self._drop()
                else:
                    self._rollback_quietly()
                locked = isinstance(exc, self.pg.errors.LockNotAvailable)
                if not locked and self._permanent(exc):
                    raise QueueError(f"store {self.location}: {_first_line(exc)}") from None
                waited = time.monotonic() - start
                if self.lock_timeout is not None and waited >= self.lock_timeout:
                    if locked:
                        raise StoreBusy(f"the store {self.location} stayed locked by another process "
                                        f"for {waited:.0f} s") from None
                    raise QueueError(f"store {self.location} unavailable for {waited:.0f} s: "
                                     f"{_first_line(exc)}") from None
                if waited > 1 and not warned:
                    what = "is locked by another process; waiting" if locked else \
                        f"unavailable ({_first_line(exc)}); retrying"
                    print(f"queuectl: store {self.location} {what}", file=sys.stderr, flush=True)
                    warned = True
                import random

                pause = delay * random.uniform(0.5, 1.0)
                if self.lock_timeout is not None:
                    pause = min(pause, max(0.0, self.lock_timeout - waited))
                time.sleep(pause)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
            except self.pg.Error as exc:
                self._rollback_quietly()
                raise QueueError(f"store {self.location}: {_first_line(exc)}") from None

    def _rollback_quietly(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            if conn.info.transaction_status != self.pg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except Exception:
            self._drop()

    def _transaction(self, conn, fn):
        """BEGIN, learn the transaction id and the clock offset, run ``fn``, COMMIT.

        Knowing the id before COMMIT is what makes a lost COMMIT answer harmless: the outcome
        is asked for on a new connection, so a write is neither lost nor applied twice.
        """
        cur = conn.cursor()
        before = time.time()
        cur.execute("BEGIN; SELECT txid_current(), extract(epoch FROM clock_timestamp())::float8")
        after = time.time()
        cur.nextset()
        xid, db_now = cur.fetchone()
        tx = _Tx(cur, db_now - (before + after) / 2)
        try:
            result = fn(tx)
        except BaseException:
            self._rollback_quietly()
            raise
        try:
            cur.execute("COMMIT")
        except (self.pg.OperationalError, self.pg.InterfaceError):
            if not (conn.closed or conn.broken):
                raise                       # refused: rolled back, safe to retry
            self._drop()
            if self._committed(xid):        # the answer was lost, not the commit
                return result
            raise
        return result

    def _committed(self, xid: int) -> bool:
        """Whether a transaction whose COMMIT went unanswered did commit (asked on a new connection)."""
        start = time.monotonic()
        while True:
            rows = self._run(lambda cur: cur.execute("SELECT txid_status(%s)", (xid,)).fetchall(), write=False)
            status = rows[0][0] if rows else None
            if status != "in progress":
                return status == "committed"
            if self.lock_timeout is not None and time.monotonic() - start >= self.lock_timeout:
                raise QueueError(f"store {self.location}: the outcome of a commit is still unknown after "
                                 f"{time.monotonic() - start:.0f} s")
            time.sleep(0.05)

    def _read(self, sql: str, params=()) -> list:
        return self._run(lambda cur: cur.execute(self.q(sql), params).fetchall(), write=False)

    def _write(self, fn):
        return self._run(fn, write=True)

    def _auto(self, sql: str, params=()):
        """One statement that may safely run twice (a retry after a lost answer): no transaction."""
        return self._run(lambda cur: cur.execute(self.q(sql), params), write=False)

    # --- schema --------------------------------------------------------------------------------

    def init(self) -> None:
        def version(cur):
            try:
                row = cur.execute(self.q("SELECT value FROM {s}.meta WHERE key = 'schema_version'")).fetchone()
            except (self.pg.errors.UndefinedTable, self.pg.errors.InvalidSchemaName):
                return None
            return int(row[0]) if row else 0

        if self._run(version, write=False) == SCHEMA_VERSION:
            return
        self._write(self._migrate)

    def _migrate(self, tx: _Tx) -> None:
        # One process at a time migrates a schema; the others then find it done.
        tx.cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"queuectl schema {self.schema}",))
        tx.cur.execute(self.q("CREATE SCHEMA IF NOT EXISTS {s}"))
        tx.cur.execute(self.q("CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)"))
        row = tx.cur.execute(self.q("SELECT value FROM {s}.meta WHERE key = 'schema_version'")).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaError(f"the store {self.location} has schema version {version}, newer than this queuectl "
                              f"understands ({SCHEMA_VERSION}); upgrade queuectl before using it")
        for target in sorted(v for v in MIGRATIONS if v > version):
            for statement in MIGRATIONS[target]:
                tx.cur.execute(statement.replace("{s}", self.s))
            tx.cur.execute(self.q("INSERT INTO {s}.meta VALUES ('schema_version', %s) "
                                  "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"), (str(target),))

    def close(self) -> None:
        self._drop()

    def describe(self) -> dict:
        rows = self._read("SELECT value FROM {s}.meta WHERE key = 'schema_version'")
        return {"backend": "postgresql", "location": self.location, "schema": self.schema,
                "schema_version": int(rows[0][0]) if rows else 0}

    # --- rows ----------------------------------------------------------------------------------

    @staticmethod
    def _job(row) -> Job:
        (id_, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout,
         source, fields, created_at, updated_at, run_at, last_error, exit_code, owner, host, pid, pid_start,
         pgid, expires, token, run_id, started_at) = row[:28]
        lease = None
        if state == PROCESSING and owner is not None:
            lease = Lease(owner=owner, host=host, pid=pid, pid_start=pid_start, token=token, run_id=run_id,
                          expires=expires, pgid=pgid, started_at=started_at,
                          expired=bool(row[28]) if len(row) > 28 else False)
        return Job(id=id_, command=command, state=state, attempts=attempts, tries=tries,
                   max_retries=max_retries, priority=priority, queue=queue, executor=executor, cwd=cwd,
                   env=json.loads(env) if env else {}, timeout=timeout, source=source,
                   fields=json.loads(fields) if fields else {}, created_at=created_at, updated_at=updated_at,
                   run_at=run_at, last_error=last_error, exit_code=exit_code, lease=lease)

    @staticmethod
    def _attempt(row) -> Attempt:
        (job_id, attempt, outcome, started, finished, exit_code, sig, error, out, err, worker, host, pid) = row
        return Attempt(job_id=job_id, attempt=attempt, outcome=outcome, started_at=started, finished_at=finished,
                       exit_code=exit_code, signal=sig, error=error, stdout=bytes(out or b""),
                       stderr=bytes(err or b""), worker=worker, host=host, pid=pid)

    # --- jobs ------------------------------------------------------------------------------------

    def add_jobs(self, jobs: list[Job], receipt: Optional[dict] = None) -> None:
        def insert(tx: _Tx):
            rows = [(j.id, j.command, j.state, j.max_retries, j.priority, j.queue, j.executor, j.cwd,
                     json.dumps(j.env) if j.env else None, j.timeout, j.source,
                     json.dumps(j.fields) if j.fields else None, tx.db_time(j.created_at),
                     tx.db_time(j.updated_at), tx.db_time(j.run_at)) for j in jobs]
            try:
                if len(rows) == 1:      # one round trip; COPY takes two but wins from a few rows on
                    tx.cur.execute(self.q(f"INSERT INTO {{s}}.jobs ({INSERT_COLUMNS}) VALUES "
                                          f"({', '.join(['%s'] * 15)})"), rows[0])
                else:
                    with tx.cur.copy(self.q(f"COPY {{s}}.jobs ({INSERT_COLUMNS}) FROM STDIN")) as copy:
                        for row in rows:
                            copy.write_row(row)
            except self.pg.errors.UniqueViolation:
                raise _Duplicate() from None
            if receipt is not None:
                try:
                    tx.cur.execute(self.q(f"INSERT INTO {{s}}.receipts VALUES (%s, %s, %s, %s, {NOW})"),
                                   (receipt["key"], receipt.get("name"), receipt.get("sha256"),
                                    json.dumps([j.id for j in jobs])))
                except self.pg.errors.UniqueViolation:
                    raise Conflict(f"receipt {receipt['key']!r} is already recorded") from None

        try:
            self._write(insert)
        except _Duplicate:
            raise Conflict(self._duplicate_message(jobs)) from None

    def _duplicate_message(self, jobs: list[Job]) -> str:
        existing = {r[0] for r in self._read("SELECT id FROM {s}.jobs WHERE id = ANY(%s)", ([j.id for j in jobs],))}
        seen = set()
        for job in jobs:
            if job.id in seen or job.id in existing:
                return f"a job with id {job.id!r} already exists"
            seen.add(job.id)
        return "duplicate job id"

    def get_receipt(self, key: str) -> Optional[dict]:
        rows = self._read("SELECT key, name, sha256, job_ids, created_at FROM {s}.receipts WHERE key = %s", (key,))
        if not rows:
            return None
        key, name, sha, job_ids, created = rows[0]
        return {"key": key, "name": name, "sha256": sha, "job_ids": json.loads(job_ids), "created_at": created}

    def get_job(self, job_id: str) -> Optional[Job]:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM {{s}}.jobs WHERE id = %s", (job_id,))
        return self._job(rows[0]) if rows else None

    def list_jobs(self, state=None, limit=None, offset=0) -> list[Job]:
        where, params = ("WHERE state = %s", [state]) if state else ("", [])
        sql = f"SELECT {JOB_COLUMNS} FROM {{s}}.jobs {where} ORDER BY seq LIMIT %s OFFSET %s"
        return [self._job(r) for r in self._read(sql, (*params, limit, offset))]

    def counts(self) -> dict:
        return {state: int(n) for state, n in self._read("SELECT state, sum(n) FROM {s}.state_counts GROUP BY state")}

    def attempts(self, job_id: str, attempt=None) -> list[Attempt]:
        sql = f"SELECT {ATTEMPT_COLUMNS} FROM {{s}}.attempts WHERE job_id = %s"
        params = [job_id]
        if attempt is not None:
            sql += " AND attempt = %s"
            params.append(attempt)
        return [self._attempt(r) for r in self._read(sql + " ORDER BY attempt", params)]

    def retry_job(self, job_id: str, from_states) -> Job:
        def move(tx: _Tx):
            rows = tx.all(self.q(f"UPDATE {{s}}.jobs SET state = 'pending', tries = 0, run_at = {NOW}, "
                                 f"updated_at = {NOW} WHERE id = %s AND state = ANY(%s) RETURNING {JOB_COLUMNS}"),
                          (job_id, list(from_states)))
            if not rows:
                state = tx.all(self.q("SELECT state FROM {s}.jobs WHERE id = %s"), (job_id,))
                raise Conflict(f"job {job_id!r} is {state[0][0] if state else 'missing'}, "
                               f"not {' or '.join(from_states)}")
            return self._job(rows[0])
        return self._write(move)

    # --- claiming and leases ---------------------------------------------------------------------

    CLAIM = (f"UPDATE {{s}}.jobs j SET state = 'processing', attempts = attempts + 1, tries = tries + 1, "
             f"lease_owner = %s, lease_host = %s, lease_pid = %s, lease_pid_start = %s, lease_pgid = NULL, "
             f"lease_expires = {NOW} + %s, lease_token = lease_token + 1, "
             f"run_id = replace(gen_random_uuid()::text, '-', ''), started_at = {NOW}, updated_at = {NOW} "
             f"WHERE j.seq = (SELECT seq FROM {{s}}.jobs WHERE state IN ('pending', 'failed') AND run_at <= {NOW} "
             f"ORDER BY priority DESC, run_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {J_JOB_COLUMNS}")

    def _claim(self, tx: _Tx, worker: WorkerInfo, lease_timeout: float) -> Optional[Job]:
        rows = tx.all(self.q(self.CLAIM), (worker.id, worker.host, worker.pid, worker.pid_start,
                                          float(lease_timeout)))
        return self._job(rows[0]) if rows else None

    def claim(self, worker: WorkerInfo, lease_timeout: float) -> Optional[Job]:
        return self._write(lambda tx: self._claim(tx, worker, lease_timeout))

    def renew(self, job_id: str, token: int, lease_timeout: float, pgid=None) -> bool:
        cur = self._auto(f"UPDATE {{s}}.jobs SET lease_expires = {NOW} + %s, "
                         f"lease_pgid = COALESCE(%s::integer, lease_pgid) "
                         f"WHERE id = %s AND lease_token = %s AND state = 'processing'",
                         (float(lease_timeout), pgid, job_id, token))
        return cur.rowcount == 1

    def finish(self, job_id, token, attempt: Attempt, to: Transition, claim_next=None, lease_timeout=30.0):
        def record(tx: _Tx):
            rows = tx.all(self.q(
                f"UPDATE {{s}}.jobs SET state = %s, run_at = %s, last_error = %s, exit_code = %s, "
                f"tries = tries - %s, updated_at = {NOW}, lease_owner = NULL, lease_host = NULL, lease_pid = NULL, "
                f"lease_pid_start = NULL, lease_pgid = NULL, lease_expires = NULL, run_id = NULL "
                f"WHERE id = %s AND lease_token = %s AND state = 'processing' RETURNING {JOB_COLUMNS}"),
                (to.state, tx.db_time(to.run_at), to.error, attempt.exit_code, 0 if to.count_try else 1,
                 job_id, token))
            job = self._job(rows[0]) if rows else None
            if job is not None:
                self._record_attempt(tx, attempt)
            following = self._claim(tx, claim_next, lease_timeout) if claim_next else None
            return job, following
        return self._write(record)

    def _record_attempt(self, tx: _Tx, a: Attempt) -> None:
        started, finished = tx.db_time(a.started_at), tx.db_time(a.finished_at)
        tx.cur.execute(self.q(
            f"WITH a AS (INSERT INTO {{s}}.attempts ({ATTEMPT_COLUMNS}) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)) "
            f"SELECT {{s}}.record_run(%s, %s, %s, %s, %s)"),
            (a.job_id, a.attempt, a.outcome, started, finished, a.exit_code, a.signal, a.error, a.stdout,
             a.stderr, a.worker, a.host, a.pid, _bucket(a.duration), 0 if a.ok else 1, a.duration,
             started, finished))

    def leases(self) -> list[Job]:
        rows = self._read(f"SELECT {JOB_COLUMNS}, lease_expires < {NOW} FROM {{s}}.jobs WHERE state = 'processing'")
        return [self._job(r) for r in rows]

    def next_run_at(self) -> Optional[float]:
        # On this host's clock: the caller compares it with time.time().
        rows = self._read("SELECT MIN(run_at) - extract(epoch FROM clock_timestamp())::float8 "
                          "FROM {s}.jobs WHERE state IN ('pending', 'failed')")
        delay = rows[0][0] if rows else None
        return None if delay is None else time.time() + delay

    def has_outstanding(self) -> bool:
        rows = self._read("SELECT COALESCE(SUM(n), 0) FROM {s}.state_counts "
                          "WHERE state IN ('pending', 'processing', 'failed')")
        return rows[0][0] > 0

    # --- settings --------------------------------------------------------------------------------

    def get_settings(self) -> dict:
        return {k: json.loads(v) for k, v in self._read("SELECT key, value FROM {s}.settings")}

    def set_setting(self, key, value) -> None:
        self._auto("INSERT INTO {s}.settings VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                   (key, json.dumps(value)))

    def unset_setting(self, key) -> bool:
        def remove(tx: _Tx):
            tx.cur.execute(self.q("DELETE FROM {s}.settings WHERE key = %s"), (key,))
            return tx.cur.rowcount == 1
        return self._write(remove)

    # --- workers -----------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        self._auto(f"INSERT INTO {{s}}.workers (id, kind, host, pid, pid_start, pool_id, started_at, heartbeat_at) "
                   f"VALUES (%s, %s, %s, %s, %s, %s, {NOW}, {NOW}) ON CONFLICT (id) DO UPDATE SET "
                   f"kind = EXCLUDED.kind, host = EXCLUDED.host, pid = EXCLUDED.pid, pid_start = EXCLUDED.pid_start, "
                   f"pool_id = EXCLUDED.pool_id, started_at = EXCLUDED.started_at, "
                   f"heartbeat_at = EXCLUDED.heartbeat_at, stop_requested = 0",
                   (info.id, info.kind, info.host, info.pid, info.pid_start, info.pool_id))

    def heartbeat_worker(self, worker_id: str) -> bool:
        rows = self._auto(f"UPDATE {{s}}.workers SET heartbeat_at = {NOW} WHERE id = %s RETURNING stop_requested",
                          (worker_id,)).fetchall()
        return not rows or not rows[0][0]

    def remove_worker(self, worker_id: str) -> None:
        self._auto("DELETE FROM {s}.workers WHERE id = %s OR pool_id = %s", (worker_id, worker_id))

    def workers(self) -> list[dict]:
        rows = self._read(
            "SELECT w.id, w.kind, w.host, w.pid, w.pid_start, w.pool_id, w.started_at, w.heartbeat_at, "
            "w.stop_requested, (SELECT j.id FROM {s}.jobs j WHERE j.state = 'processing' AND j.lease_owner = w.id "
            "LIMIT 1) FROM {s}.workers w ORDER BY w.started_at")
        keys = ("id", "kind", "host", "pid", "pid_start", "pool_id", "started_at", "heartbeat_at",
                "stop_requested", "job_id")
        return [dict(zip(keys, r)) for r in rows]

    def request_stop(self, host=None) -> int:
        sql = "UPDATE {s}.workers SET stop_requested = 1 WHERE kind = 'pool'"
        return self._auto(sql + (" AND host = %s" if host else ""), (host,) if host else ()).rowcount

    # --- statistics ----------------------------------------------------------------------------------

    def stats(self) -> dict:
        def read(cur):
            totals = cur.execute(self.q(
                "SELECT COALESCE(SUM(total_runs), 0), COALESCE(SUM(failed_runs), 0), "
                "COALESCE(SUM(total_duration), 0), MIN(first_started), MAX(last_finished) "
                "FROM {s}.run_stats")).fetchone()
            hist = cur.execute(self.q("SELECT bucket, SUM(n) FROM {s}.duration_hist GROUP BY bucket "
                                      "ORDER BY bucket")).fetchall()
            recent = cur.execute(self.q(f"SELECT COUNT(*) FROM {{s}}.attempts WHERE finished_at >= {NOW} - 60"
                                        )).fetchone()[0]
            counts = cur.execute(self.q("SELECT state, SUM(n) FROM {s}.state_counts GROUP BY state")).fetchall()
            return totals, [(b, int(n)) for b, n in hist], recent, {s: int(n) for s, n in counts}

        (total, failed, total_duration, first, last), hist, recent, counts = self._run(read, write=False)
        total, failed = int(total), int(failed)
        span = (last - first) if first is not None and last is not None else 0.0
        return {
            "total_runs": total, "failed_runs": failed,
            "avg_duration": total_duration / total if total else None,
            "p50_duration": _percentile(hist, total, 0.50), "p95_duration": _percentile(hist, total, 0.95),
            "dead_jobs": counts.get(DEAD, 0), "completed_jobs": counts.get("completed", 0),
            "throughput": total / span if span > 0 else None,
            "throughput_1m": recent / 60.0,
        }

    # --- wake-ups --------------------------------------------------------------------------------------

    def notify(self) -> None:
        """NOTIFY the schema's channel; best effort (a lost wake-up costs at most a poll interval)."""
        try:
            self._connection().execute(f"NOTIFY {self.channel}")
        except self.pg.Error:
            self._drop()

    def listener(self, name: str):
        return PGListener(self)


class PGListener:
    """A dedicated autocommit connection that LISTENs on the schema's channel.

    The worker selects on ``fileno()``. When the server goes away the socket turns readable,
    ``drain()`` notices and drops it, and the next ``fileno()`` reconnects and reports itself
    ready once, so the worker looks for work it may have missed while not listening.
    """

    def __init__(self, store: PostgresStore):
        self.store = store
        self.conn = None
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._kicked = False
        self._lost = False
        self._next_attempt = 0.0
        self._open()

    def _open(self) -> bool:
        conn = None
        try:
            conn = self.store.connect()
            conn.add_notice_handler(self._on_notice)
            conn.execute(f"LISTEN {self.store.channel}")
        except self.store.pg.Error:
            if conn is not None:
                conn.close()
            return False
        self.conn = conn
        self._lost = False
        return True

    def _on_notice(self, diag) -> None:
        if diag.severity_nonlocalized == "FATAL" or (diag.sqlstate or "").startswith("57"):
            self._lost = True

    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            try:
                os.write(self._w, b"!")
            except OSError:
                pass

    def fileno(self) -> int:
        if self.conn is None:
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                time.sleep(wait)            # never spin when the server refuses us but the store does not
            self._next_attempt = time.monotonic() + LISTENER_RETRY
            self._open()
            self._kick()                    # reconnected or not: go and look for work now
        if self._kicked or self.conn is None:
            return self._r
        return self.conn.fileno()

    def drain(self) -> None:
        if self._kicked:
            try:
                while os.read(self._r, 64):
                    pass
            except OSError:
                pass
            self._kicked = False
        if self.conn is None:
            return
        try:
            pgconn = self.conn.pgconn
            for _ in range(4):
                pgconn.consume_input()
                while pgconn.notifies() is not None:
                    pass
                # A server that shuts down says so first (a FATAL notice) and closes after.
                if self._lost or pgconn.status != self.store.pg.pq.ConnStatus.OK:
                    raise self.store.pg.OperationalError("connection lost")
                if not select.select([pgconn.socket], [], [], 0)[0]:
                    break
        except self.store.pg.Error:
            self._close_conn()

    def _close_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        self._close_conn()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
