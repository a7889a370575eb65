"""The built-in PostgreSQL storage backend: several hosts, one database, fenced leases.

Selected by ``db: postgresql://...``. Everything lives in one schema (``pg-schema``,
default ``queuectl``), so several queues can share a database. psycopg 3 is imported
only when this backend is used (``pip install 'queuectl[postgres]'``).

* A claim is one ``UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)``:
  workers never wait for each other's claims. Only a queue with a concurrency limit is
  claimed from under a per-queue lock (an advisory lock, see ``_claim``), since SKIP LOCKED
  cannot count the jobs other transactions are claiming at the same moment.
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
import os
import re
import select
import sys
import time
from typing import Optional

from queuectl import hookimpl
from queuectl.config import Setting
from queuectl.errors import Conflict, NotFound, QueueError, SchemaError, StoreBusy, StoreMissing, UsageError
from queuectl.models import CANCELLED, COMPLETED, DEAD, PROCESSING, Attempt, Job
from queuectl.builtin._rows import (
    ATTEMPT_COLUMNS, EDIT_SET, JOB_COLUMNS, N_JOB_COLUMNS, attempt_from_row, bucket, edit_values, job_filters,
    job_from_row, keyset_page, like_pattern, receipt_conflict, receipt_from_row, schedule_from_row,
    series_backfill, series_points, series_row, settings_from_rows, split_ids, stats_summary,
    summaries_sql, summary_from_row,
)
from queuectl.store import Transition, WorkerInfo, blocked_message

SCHEMA_VERSION = 5
SCHEMA_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
RECONNECT_MAX_DELAY = 1.0       # seconds between reconnection attempts, at most
COMMAND_OUTAGE = 3.0            # a one-shot command gives up on an unreachable server after this (workers never)
#: Connection failures that say no server is there at all (as opposed to a busy or restarting one).
UNREACHABLE_MARKERS = ("Connection refused", "No such file or directory", "could not translate host name",
                       "Network is unreachable", "No route to host")
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
# libpq's check of a setting's value, made only when it connects (sslmode=bogus: 'invalid sslmode value:
# "bogus"'): the URL is wrong, and retrying it waits for nothing.
INVALID_SETTING = re.compile(r'invalid \w+ value: "')

# The database clock, as epoch seconds. statement_timestamp() is stable within a statement.
NOW = "extract(epoch FROM statement_timestamp())::float8"

J_JOB_COLUMNS = ", ".join("j." + c.strip() for c in JOB_COLUMNS.split(","))
INSERT_COLUMNS = ("id, command, state, max_retries, priority, queue, executor, cwd, env, timeout, source, fields, "
                  "created_at, updated_at, run_at, unique_key, after_ids, labels, argv")
N_INSERT_COLUMNS = INSERT_COLUMNS.count(",") + 1
ACTIVE = "('pending', 'failed', 'processing')"
#: A job that may start now, as far as the job itself is concerned (its queue is checked apart).
RUNNABLE = f"state IN ('pending', 'failed') AND waiting_on = 0 AND run_at <= {NOW}"
CLAIM_ORDER = "ORDER BY priority DESC, run_at, seq"
#: A queue row q with room for one more running job (counted by the statement's snapshot).
UNDER_LIMIT = ("(q.concurrency IS NULL OR q.concurrency > (SELECT count(*) FROM {s}.jobs p "
               "WHERE p.state = 'processing' AND p.queue = q.name))")


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
    # Scheduling and control, as in the SQLite store's version 2: dependencies, unique keys, cancel,
    # queues with limits and pauses, recurring jobs.
    2: [
        "ALTER TABLE {s}.jobs ADD COLUMN unique_key text, ADD COLUMN after_ids text, "
        "ADD COLUMN waiting_on integer NOT NULL DEFAULT 0, ADD COLUMN cancel_requested integer NOT NULL DEFAULT 0",
        "DROP INDEX {s}.jobs_claim",
        "CREATE INDEX jobs_claim ON {s}.jobs (priority DESC, run_at, seq) "
        "WHERE state IN ('pending', 'failed') AND waiting_on = 0",
        # Not in the SQLite schema: the best job of one queue without walking the others' (a limited
        # queue's claim, the look at limited queues every claim makes, a worker's --queue list).
        "CREATE INDEX jobs_claim_queue ON {s}.jobs (queue, priority DESC, run_at, seq) "
        "WHERE state IN ('pending', 'failed') AND waiting_on = 0",
        "CREATE UNIQUE INDEX jobs_unique_key ON {s}.jobs (unique_key) "
        f"WHERE unique_key IS NOT NULL AND state IN {ACTIVE}",
        "CREATE INDEX jobs_processing_queue ON {s}.jobs (queue) WHERE state = 'processing'",
        "CREATE INDEX jobs_finished ON {s}.jobs (state, updated_at) WHERE state IN ('completed', 'dead', 'cancelled')",
        # A satisfied dependency stays satisfied even if the job it named is purged later.
        """CREATE TABLE {s}.job_deps (job_id text NOT NULL, dep_id text NOT NULL,
            satisfied integer NOT NULL DEFAULT 0, PRIMARY KEY (job_id, dep_id))""",
        "CREATE INDEX job_deps_waiting ON {s}.job_deps (dep_id) WHERE satisfied = 0",
        "CREATE TABLE {s}.queues (name text PRIMARY KEY, concurrency integer, paused integer NOT NULL DEFAULT 0)",
        # last_tick is a cron tick, compared exactly by fire_schedule: stored as given, never shifted.
        """CREATE TABLE {s}.schedules (name text PRIMARY KEY, cron text NOT NULL, spec text NOT NULL,
            missed text NOT NULL, last_tick double precision, created_at double precision NOT NULL)""",
    ],
    # Live output: what a running attempt printed so far, in chunks (see queuectl/output.py).
    3: [
        """CREATE TABLE {s}.output_chunks (seq bigserial PRIMARY KEY, job_id text NOT NULL,
            attempt integer NOT NULL, stream text NOT NULL, "offset" bigint NOT NULL, data bytea NOT NULL,
            written_at double precision NOT NULL)""",
        "CREATE INDEX output_chunks_attempt ON {s}.output_chunks (job_id, attempt, seq)",
        "CREATE INDEX output_chunks_written ON {s}.output_chunks (written_at)",
    ],
    # Issue 13, the command line, as in the SQLite store's version 4: labels, argv jobs, edit history,
    # and indexes for `list`'s filters and for id prefixes.
    4: [
        "ALTER TABLE {s}.jobs ADD COLUMN labels text, ADD COLUMN argv text, ADD COLUMN edits text",
        # `list --label K=V` is `labels::jsonb @> '{"K": "V"}'`, answered by this index.
        "CREATE INDEX jobs_labels ON {s}.jobs USING gin ((labels::jsonb))",
        "CREATE INDEX jobs_queue ON {s}.jobs (queue, seq)",
        "CREATE INDEX jobs_created ON {s}.jobs (created_at)",
        # Byte order whatever the database's collation, so `id LIKE 'ab%'` is a range on it.
        "CREATE INDEX jobs_id_prefix ON {s}.jobs (id text_pattern_ops)",
    ],
    # The dashboard and /metrics, as in the SQLite store's version 5: striped jobs per queue and
    # state, and a striped per-minute ring of attempts (slot = minute % 1440).
    5: [
        """CREATE TABLE {s}.queue_counts (queue text NOT NULL, state text NOT NULL, stripe bigint NOT NULL,
            n bigint NOT NULL, PRIMARY KEY (queue, state, stripe))""",
        "INSERT INTO {s}.queue_counts SELECT queue, state, nextval('{s}.stripes'), count(*) FROM {s}.jobs "
        "GROUP BY queue, state",
        "CREATE FUNCTION {s}.bump_queue_count(p_queue text, p_state text, p_delta bigint) RETURNS void "
        "LANGUAGE plpgsql AS $$\nDECLARE k bigint;\nBEGIN"
        + _striped("queue_counts", "queue = p_queue AND state = p_state", "n = n + p_delta",
                   "p_queue, p_state, nextval('{s}.stripes'), p_delta") + "\nEND $$",
        """CREATE FUNCTION {s}.jobs_queue_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT queue, state, count(*) AS c FROM added GROUP BY queue, state ORDER BY queue, state LOOP
    PERFORM {s}.bump_queue_count(r.queue, r.state, r.c);
  END LOOP;
  RETURN NULL;
END $$""",
        """CREATE FUNCTION {s}.jobs_queue_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT queue, state, count(*) AS c FROM removed GROUP BY queue, state ORDER BY queue, state LOOP
    PERFORM {s}.bump_queue_count(r.queue, r.state, -r.c);
  END LOOP;
  RETURN NULL;
END $$""",
        """CREATE FUNCTION {s}.jobs_queue_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM {s}.bump_queue_count(OLD.queue, OLD.state, -1);
  PERFORM {s}.bump_queue_count(NEW.queue, NEW.state, 1);
  RETURN NULL;
END $$""",
        """CREATE TRIGGER jobs_queue_count_insert AFTER INSERT ON {s}.jobs REFERENCING NEW TABLE AS added
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_queue_count_insert()""",
        """CREATE TRIGGER jobs_queue_count_delete AFTER DELETE ON {s}.jobs REFERENCING OLD TABLE AS removed
            FOR EACH STATEMENT EXECUTE FUNCTION {s}.jobs_queue_count_delete()""",
        """CREATE TRIGGER jobs_queue_count_update AFTER UPDATE OF state, queue ON {s}.jobs FOR EACH ROW
            WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.queue IS DISTINCT FROM NEW.queue)
            EXECUTE FUNCTION {s}.jobs_queue_count_update()""",
        "CREATE INDEX jobs_queue_state ON {s}.jobs (queue, state, seq)",
        """CREATE TABLE {s}.run_series (slot integer NOT NULL, bucket integer NOT NULL, stripe bigint NOT NULL,
            minute bigint NOT NULL, n bigint NOT NULL, failed bigint NOT NULL, PRIMARY KEY (slot, bucket, stripe))""",
        # A stripe that holds an older minute of its slot starts over.
        "CREATE FUNCTION {s}.record_series(p_slot integer, p_bucket integer, p_minute bigint, p_failed integer) "
        "RETURNS void LANGUAGE plpgsql AS $$\nDECLARE k bigint;\nBEGIN"
        + _striped("run_series", "slot = p_slot AND bucket = p_bucket",
                   "n = CASE WHEN minute = p_minute THEN n + 1 ELSE 1 END, "
                   "failed = CASE WHEN minute = p_minute THEN failed + p_failed ELSE p_failed END, "
                   "minute = p_minute",
                   "p_slot, p_bucket, nextval('{s}.stripes'), p_minute, 1, p_failed") + "\nEND $$",
        lambda store, tx: store.backfill_series(tx),
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
        if "://" not in url:
            raise UsageError(f"the postgres storage backend needs a postgresql:// URL, not the path {url!r}")
        self.pg = _psycopg()
        rest = url.split("://", 1)[1]
        self.conninfo = "postgresql://" + rest          # "postgresql+psycopg://" and "postgres://" too
        self.url = url
        self.queue = queue
        self.schema = queue.config.get("pg-schema")
        self.s = f'"{self.schema}"'
        self.channel = f'"queuectl_wake_{self.schema}"'
        # NOTIFY on every stored chunk of output. A channel is an identifier, at most 63 bytes: LISTEN cuts a
        # longer one there, pg_notify refuses it (a 48-character schema made 64), so it is cut here for both.
        self.output_channel = f"queuectl_output_{self.schema}"[:63]
        self.location = f"{redact(self.conninfo)} (pg-schema {self.schema})"
        self.lock_timeout: Optional[float] = queue.config.get("lock-timeout")
        try:
            given = self.pg.conninfo.conninfo_to_dict(self.conninfo)
        except self.pg.ProgrammingError as exc:
            raise QueueError(f"invalid PostgreSQL URL {redact(url)}: {_first_line(exc)}") from None
        self.connect_args = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        self._conn = None
        self._pid = os.getpid()          # the process that opened _conn: a fork's child opens its own
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
        if self._conn is not None and self._pid != os.getpid():
            disown(self._conn)
            self._conn = None
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            self._pid = os.getpid()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid != os.getpid():
            disown(conn)
        elif conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _permanent(self, exc: BaseException) -> bool:
        if getattr(exc, "sqlstate", None):
            return exc.sqlstate[:2] in ("28", "3D", "42")
        text = str(exc)
        return any(marker in text for marker in PERMANENT_MARKERS) or INVALID_SETTING.search(text) is not None

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
                limit = self._give_up_after(locked, exc)
                if limit is not None and waited >= limit:
                    if locked:
                        raise StoreBusy(f"the store {self.location} stayed locked by another process "
                                        f"for {waited:.0f} s") from None
                    raise QueueError(f"store {self.location} unavailable for {waited:.0f} s: "
                                     f"{_first_line(exc)}") from None
                if waited > 1 and not warned and limit is None:     # a command says it once, failing
                    what = "is locked by another process; waiting" if locked else \
                        f"unavailable ({_first_line(exc)}); retrying"
                    print(f"queuectl: store {self.location} {what}", file=sys.stderr, flush=True)
                    warned = True
                import random

                pause = delay * random.uniform(0.5, 1.0)
                if limit is not None:
                    pause = min(pause, max(0.0, limit - waited))
                time.sleep(pause)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
            except self.pg.Error as exc:
                self._rollback_quietly()
                raise QueueError(f"store {self.location}: {_first_line(exc)}") from None

    def _give_up_after(self, locked: bool, exc: BaseException) -> Optional[float]:
        """Seconds a call retries: workers (lock_timeout None) for ever; a command waits out a lock or
        a busy server for lock-timeout, but no server at all for only a few seconds."""
        if self.lock_timeout is None:
            return None
        if not locked and any(marker in str(exc) for marker in UNREACHABLE_MARKERS):
            return min(self.lock_timeout, COMMAND_OUTAGE)
        return self.lock_timeout

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
        # READ COMMITTED whatever the server's default: a limited queue's claim counts its running
        # jobs in a statement that starts after the queue's lock is held, so it must see fresh data.
        cur.execute("BEGIN ISOLATION LEVEL READ COMMITTED; "
                    "SELECT txid_current(), extract(epoch FROM clock_timestamp())::float8")
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

        found = self._run(version, write=False)
        if found == SCHEMA_VERSION:
            return
        if found is None and not self.queue.create_store:
            raise StoreMissing(f"no store at {self.location} (check --db and pg-schema; "
                             f"'queuectl init' creates one)")
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
                if callable(statement):
                    statement(self, tx)
                else:
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

    _job = staticmethod(job_from_row)
    _attempt = staticmethod(attempt_from_row)

    # --- jobs ------------------------------------------------------------------------------------

    def add_jobs(self, jobs: list[Job], receipt: Optional[dict] = None) -> list[str]:
        return self.add_deliveries([(jobs, receipt)])[0]

    def add_deliveries(self, deliveries: list[tuple[list[Job], Optional[dict]]]) -> list[list[str]]:
        jobs = [job for batch, _ in deliveries for job in batch]

        def insert(tx: _Tx):
            ids = split_ids(self._store_jobs(tx, jobs), deliveries)
            receipts = [(r["key"], r.get("name"), r.get("sha256"), json.dumps(batch_ids))
                        for (_, r), batch_ids in zip(deliveries, ids) if r is not None]
            try:
                if receipts:
                    tx.cur.executemany(self.q(f"INSERT INTO {{s}}.receipts VALUES (%s, %s, %s, %s, {NOW})"),
                                       receipts)
            except self.pg.errors.UniqueViolation:
                raise Conflict(receipt_conflict([r[0] for r in receipts])) from None
            return ids

        try:
            return self._write(insert)
        except _Duplicate:
            raise Conflict(self._duplicate_message(jobs)) from None

    @staticmethod
    def _row(tx: _Tx, j: Job) -> tuple:
        return (j.id, j.command, j.state, j.max_retries, j.priority, j.queue, j.executor, j.cwd,
                json.dumps(j.env) if j.env else None, j.timeout, j.source,
                json.dumps(j.fields) if j.fields else None, tx.db_time(j.created_at),
                tx.db_time(j.updated_at), tx.db_time(j.run_at), j.unique_key,
                json.dumps(j.after) if j.after else None,
                json.dumps(j.labels) if j.labels else None, json.dumps(j.argv) if j.argv is not None else None)

    def _store_jobs(self, tx: _Tx, jobs: list[Job]) -> list[str]:
        """Insert in order and link dependencies; returns the ids (a unique key's holder in place of its job).

        Plain jobs go in bulk (COPY); a job with a unique key goes on its own, as it may find a holder.
        """
        ids, inserted, plain = [], set(), []
        for job in jobs:
            if job.unique_key is None:
                plain.append(self._row(tx, job))
                ids.append(job.id)
                inserted.add(job.id)
                continue
            self._insert_rows(tx, plain)
            plain = []
            job_id = self._insert_unique(tx, job)
            ids.append(job_id)
            if job_id == job.id:
                inserted.add(job.id)
        self._insert_rows(tx, plain)
        linked = [job for job in jobs if job.after and job.id in inserted]
        if linked:
            self._link_dependencies(tx, linked)
        return ids

    def _insert_rows(self, tx: _Tx, rows: list[tuple]) -> None:
        try:
            if len(rows) == 1:      # one round trip; COPY takes two but wins from a few rows on
                tx.cur.execute(self.q(f"INSERT INTO {{s}}.jobs ({INSERT_COLUMNS}) VALUES "
                                      f"({', '.join(['%s'] * N_INSERT_COLUMNS)})"), rows[0])
            elif rows:
                with tx.cur.copy(self.q(f"COPY {{s}}.jobs ({INSERT_COLUMNS}) FROM STDIN")) as copy:
                    for row in rows:
                        copy.write_row(row)
        except self.pg.errors.UniqueViolation:
            raise _Duplicate() from None

    def _insert_unique(self, tx: _Tx, job: Job) -> str:
        """Insert a job with a unique key, or return the id of the active job that holds the key.

        The unique index decides, so concurrent enqueues from any host agree: ON CONFLICT waits for a
        holder being inserted by another transaction, then the holder is read by a new statement.
        """
        row = self._row(tx, job)
        while True:
            try:
                done = tx.all(self.q(
                    f"INSERT INTO {{s}}.jobs ({INSERT_COLUMNS}) VALUES ({', '.join(['%s'] * N_INSERT_COLUMNS)}) "
                    f"ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {ACTIVE} "
                    f"DO NOTHING RETURNING id"), row)
            except self.pg.errors.UniqueViolation:      # the id, not the key
                raise _Duplicate() from None
            if done:
                return job.id
            holder = tx.all(self.q(f"SELECT id FROM {{s}}.jobs WHERE unique_key = %s AND state IN {ACTIVE}"),
                            (job.unique_key,))
            if holder:
                return holder[0][0]
            # the holder finished between the two statements: the key is free again, try once more

    def _link_dependencies(self, tx: _Tx, linked: list[Job]) -> None:
        """Record what each new job waits for; a job with a dead or cancelled dependency is dead at once.

        The dependencies are read FOR SHARE: a finish or cancel of one of them waits for this
        transaction, so its settling (a new statement) sees these job_deps rows, and a finish already
        under way is waited for and its outcome read here. Nothing can be settled twice or missed.
        """
        wanted = sorted({dep for job in linked for dep in job.after})
        states = dict(tx.all(self.q("SELECT id, state FROM {s}.jobs WHERE id = ANY(%s::text[]) ORDER BY id FOR SHARE"),
                             (wanted,)))
        for job in linked:
            for dep in job.after:
                if dep not in states:
                    raise NotFound(f"job {job.id!r} depends on {dep!r}, which does not exist")
        # Dead at once: a dependency that ended dead or cancelled, or a job of this batch dead that way
        # (whatever the order of the batch: a job may name one listed after it).
        reason: dict[str, str] = {}
        dependents: dict[str, list[str]] = {}
        for job in linked:
            for dep in job.after:
                dependents.setdefault(dep, []).append(job.id)
                if states[dep] in (DEAD, CANCELLED) and job.id not in reason:
                    reason[job.id] = f"dependency {dep} ended {states[dep]}"
        todo = list(reason)
        while todo:
            dead = todo.pop()
            for child in dependents.get(dead, ()):
                if child not in reason:
                    reason[child] = f"dependency {dead} ended dead"
                    todo.append(child)
        pairs = [(job.id, dep, int(states[dep] == COMPLETED)) for job in linked for dep in dict.fromkeys(job.after)]
        tx.cur.execute(self.q("INSERT INTO {s}.job_deps (job_id, dep_id, satisfied) "
                              "SELECT * FROM unnest(%s::text[], %s::text[], %s::integer[])"),
                       ([p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]))
        waiting = {}
        for job_id, _, satisfied in pairs:
            waiting[job_id] = waiting.get(job_id, 0) + (not satisfied)
        changes = [(job_id, n, reason.get(job_id)) for job_id, n in waiting.items() if n or job_id in reason]
        if changes:
            tx.cur.execute(self.q(
                "UPDATE {s}.jobs j SET waiting_on = v.n, state = CASE WHEN v.reason IS NULL THEN j.state "
                "ELSE 'dead' END, last_error = COALESCE(v.reason, j.last_error) "
                "FROM unnest(%s::text[], %s::integer[], %s::text[]) AS v(id, n, reason) WHERE j.id = v.id"),
                ([c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes]))

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
        return receipt_from_row(rows[0])

    def get_job(self, job_id: str) -> Optional[Job]:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM {{s}}.jobs WHERE id = %s", (job_id,))
        return self._job(rows[0]) if rows else None

    def list_jobs(self, state=None, limit=None, offset=0, newest=False, **filters) -> list[Job]:
        where, params = job_filters("%s", self._label_clause, "ILIKE", state, **filters)
        order = "seq DESC" if newest else "seq"
        sql = f"SELECT {JOB_COLUMNS} FROM {{s}}.jobs {where} ORDER BY {order} LIMIT %s OFFSET %s"
        jobs = [self._job(r) for r in self._read(sql, (*params, limit, offset))]
        return jobs[::-1] if newest else jobs

    @staticmethod
    def _label_clause(key: str, value: Optional[str]) -> tuple[str, list]:
        if value is None:
            return "labels::jsonb ? %s", [key]
        return "labels::jsonb @> %s::jsonb", [json.dumps({key: value})]

    def find_ids(self, prefix: str, limit: int) -> list[str]:
        """Ids that start with ``prefix`` (a range on the text_pattern_ops index)."""
        rows = self._read("SELECT id FROM {s}.jobs WHERE id LIKE %s ORDER BY id LIMIT %s",
                          (like_pattern(prefix) + "%", limit))
        return [r[0] for r in rows]

    def edit_job(self, job_id: str, from_states, changes: dict, edit: dict, retry_from=None) -> Job:
        def change(tx: _Tx):
            rows = tx.all(self.q(f"SELECT {JOB_COLUMNS} FROM {{s}}.jobs WHERE id = %s FOR UPDATE"), (job_id,))
            if not rows or rows[0][2] not in from_states:
                raise Conflict(f"job {job_id!r} is {rows[0][2] if rows else 'missing'}, "
                               f"not {' or '.join(from_states)}: it cannot be edited")
            job = self._job(rows[0])
            rows = tx.all(self.q(f"UPDATE {{s}}.jobs SET {EDIT_SET.format(m='%s')}, updated_at = {NOW} "
                                 f"WHERE id = %s RETURNING {JOB_COLUMNS}"),
                          (*edit_values(job, changes, edit), job_id))
            return self._retry_in(tx, job_id, retry_from) if retry_from else self._job(rows[0])
        return self._write(change)

    def counts(self) -> dict:
        return {state: int(n) for state, n in self._read("SELECT state, sum(n) FROM {s}.state_counts GROUP BY state")}

    def recent_jobs(self, state: str, limit: int) -> list[Job]:
        """The jobs of one state changed last, newest first."""
        return [self._job(r) for r in self._read(
            f"SELECT {JOB_COLUMNS} FROM {{s}}.jobs WHERE state = %s ORDER BY updated_at DESC LIMIT %s", (state, limit))]

    def attempts(self, job_id: str, attempt=None) -> list[Attempt]:
        sql = f"SELECT {ATTEMPT_COLUMNS} FROM {{s}}.attempts WHERE job_id = %s"
        params = [job_id]
        if attempt is not None:
            sql += " AND attempt = %s"
            params.append(attempt)
        return [self._attempt(r) for r in self._read(sql + " ORDER BY attempt", params)]

    def attempt_summaries(self, job_id: str, after: int, before: int, limit: int) -> list:
        return [summary_from_row(r) for r in self._read(summaries_sql("{s}.attempts", "%s"),
                                                        (job_id, after, before, limit))]

    def retry_job(self, job_id: str, from_states) -> Job:
        return self._write(lambda tx: self._retry_in(tx, job_id, from_states))

    def _retry_in(self, tx: _Tx, job_id: str, from_states) -> Job:
        row = tx.all(self.q("SELECT state FROM {s}.jobs WHERE id = %s FOR UPDATE"), (job_id,))
        if not row or row[0][0] not in from_states:
            raise Conflict(f"job {job_id!r} is {row[0][0] if row else 'missing'}, "
                           f"not {' or '.join(from_states)}")
        blocker = tx.all(self.q(
            "SELECT d.dep_id, COALESCE(j.state, 'purged') FROM {s}.job_deps d LEFT JOIN {s}.jobs j "
            "ON j.id = d.dep_id WHERE d.job_id = %s AND d.satisfied = 0 "
            "AND (j.state IS NULL OR j.state IN ('dead', 'cancelled')) LIMIT 1"), (job_id,))
        if blocker:
            raise Conflict(blocked_message(job_id, *blocker[0]))
        try:
            rows = tx.all(self.q(f"UPDATE {{s}}.jobs SET state = 'pending', tries = 0, run_at = {NOW}, "
                                 f"updated_at = {NOW}, cancel_requested = 0 WHERE id = %s "
                                 f"RETURNING {JOB_COLUMNS}"), (job_id,))
        except self.pg.errors.UniqueViolation:
            raise Conflict(f"job {job_id!r} cannot be retried: its unique key is held by another job") from None
        return self._job(rows[0])

    # --- claiming and leases ---------------------------------------------------------------------

    # LEAST: a counter written near the column's limit by another tool must not make every claim fail.
    CLAIM_SET = (f"state = 'processing', attempts = LEAST(attempts, 2147483646) + 1, "
                 f"tries = LEAST(tries, 2147483646) + 1, "
                 f"lease_owner = %s, lease_host = %s, lease_pid = %s, lease_pid_start = %s, lease_pgid = NULL, "
                 f"lease_expires = {NOW} + %s, lease_token = LEAST(lease_token, 9223372036854775806) + 1, "
                 f"run_id = replace(gen_random_uuid()::text, '-', ''), started_at = {NOW}, updated_at = {NOW}")

    @staticmethod
    def _claim_sql(only: bool) -> str:
        """The claim: the best job of a queue without a limit, unless a limited queue's job comes first.

        ``lim`` is the best runnable job among limited queues that are not paused and have room
        (read without locking: only a hint); ``c`` the best among queues without a limit, locked
        with SKIP LOCKED. ``c`` is claimed unless ``lim`` comes before it. The result is one row:
        the queue of ``lim`` (to be claimed from under its lock, see _claim) or NULL, then the
        claimed job's columns, or NULLs.
        """
        where_only = "AND queue = ANY(%s::text[]) " if only else ""
        name_only = "AND q.name = ANY(%s::text[]) " if only else ""
        return (
            f"WITH lim AS (SELECT t.queue, t.priority, t.run_at, t.seq FROM {{s}}.queues q CROSS JOIN LATERAL "
            f"(SELECT queue, priority, run_at, seq FROM {{s}}.jobs WHERE queue = q.name AND {RUNNABLE} "
            f"{CLAIM_ORDER} LIMIT 1) t "
            f"WHERE q.concurrency IS NOT NULL AND q.paused = 0 AND q.name <> ALL(%s::text[]) {name_only}"
            f"AND {UNDER_LIMIT} ORDER BY t.priority DESC, t.run_at, t.seq LIMIT 1), "
            f"c AS (SELECT seq, priority, run_at FROM {{s}}.jobs WHERE {RUNNABLE} {where_only}"
            f"AND queue NOT IN (SELECT name FROM {{s}}.queues WHERE paused = 1 OR concurrency IS NOT NULL) "
            f"{CLAIM_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED), "
            f"u AS (UPDATE {{s}}.jobs j SET {PostgresStore.CLAIM_SET} FROM c WHERE j.seq = c.seq AND NOT EXISTS "
            f"(SELECT 1 FROM lim WHERE (-lim.priority, lim.run_at, lim.seq) < (-c.priority, c.run_at, c.seq)) "
            f"RETURNING {J_JOB_COLUMNS}) "
            f"SELECT (SELECT queue FROM lim), u.* FROM (VALUES (1)) AS one (x) LEFT JOIN u ON true")

    CLAIM_IN_QUEUE = (
        f"UPDATE {{s}}.jobs j SET {CLAIM_SET} WHERE j.seq = (SELECT seq FROM {{s}}.jobs WHERE queue = %s "
        f"AND {RUNNABLE} AND EXISTS (SELECT 1 FROM {{s}}.queues q WHERE q.name = %s AND q.paused = 0 "
        f"AND {UNDER_LIMIT}) {CLAIM_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {J_JOB_COLUMNS}")

    def _claim(self, tx: _Tx, worker: WorkerInfo, lease_timeout: float) -> Optional[Job]:
        """Claim the next runnable job: one statement, unless a queue with a concurrency limit is next.

        SKIP LOCKED keeps claims from waiting for each other, but a transaction cannot count
        the jobs that others are claiming right now, so two claims could both see room for one
        more. A limited queue is therefore claimed from under a lock of its own, taken in a
        statement of its own (READ COMMITTED: the counting statement that follows starts after
        every earlier holder committed, and sees their claims):

        * an advisory lock, ``pg_advisory_xact_lock`` on a hash of schema and queue name, rather
          than ``SELECT ... FOR UPDATE`` on the queue's row: it needs no row (nor a write to one),
          never makes ``queue limit``/``queue pause`` or ``queue list`` wait behind a stream of
          claims, and is released by COMMIT or ROLLBACK like any transaction lock, also when a
          client dies (the server ends its session). A hash collision between two names only
          makes their claims take turns.
        * jobs of a limited queue are locked (and claimed) only by a holder of its lock, so its
          jobs start in order; claims of unlimited queues never take it and never wait.
        * no deadlock: the lock is taken last in a transaction (a claim, or a finish that claims
          the next job), and its holder then waits for nothing (SKIP LOCKED, striped counters).
        * a limit set while a claim is under way applies to the claims that follow, as lowering
          a limit does not stop jobs already running.

        When the limited queue turns out full (others got there first), it is left out and the
        claim looks again, so the loop ends after at most one turn per limited queue.
        """
        queues = list(worker.queues) if getattr(worker, "queues", None) else None
        lease = (worker.id, worker.host, worker.pid, worker.pid_start, float(lease_timeout))
        sql = self.q(self._claim_sql(bool(queues)))
        full: list[str] = []
        while True:
            params = (full, queues, queues, *lease) if queues else (full, *lease)
            row = tx.all(sql, params)[0]
            limited, job = row[0], row[1:]
            if job[0] is not None:
                return self._job(job)
            if limited is None:
                return None
            tx.cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"queuectl queue {self.schema} {limited}",))
            rows = tx.all(self.q(self.CLAIM_IN_QUEUE), (*lease, limited, limited))
            if rows:
                return self._job(rows[0])
            full.append(limited)

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
                f"tries = GREATEST(tries, -2147483647) - %s, updated_at = {NOW}, lease_owner = NULL, "
                f"lease_host = NULL, lease_pid = NULL, "
                f"lease_pid_start = NULL, lease_pgid = NULL, lease_expires = NULL, run_id = NULL "
                f"WHERE id = %s AND lease_token = %s AND state = 'processing' RETURNING {JOB_COLUMNS}, "
                # whether anything waits for it: most jobs have no dependents, and skip a round trip
                f"EXISTS (SELECT 1 FROM {{s}}.job_deps d WHERE d.dep_id = jobs.id AND d.satisfied = 0)"),
                (to.state, tx.db_time(to.run_at), to.error, attempt.exit_code, 0 if to.count_try else 1,
                 job_id, token))
            job = self._job(rows[0][:N_JOB_COLUMNS]) if rows else None
            released = 0
            if job is not None:
                self._record_attempt(tx, attempt)
                if rows[0][N_JOB_COLUMNS]:
                    released = self._settle_dependents(tx, job.id, job.state)
            following = self._claim(tx, claim_next, lease_timeout) if claim_next else None
            return job, following, released
        job, following, released = self._write(record)
        if released:
            self.notify()               # dependents became runnable: wake idle workers
        return job, following

    def _settle_dependents(self, tx: _Tx, job_id: str, state: str) -> int:
        """A completed job releases its dependents; a dead or cancelled one kills them, transitively.

        Returns how many dependents became runnable. Dependents are locked in id order, so two
        finishes that share dependents cannot deadlock.
        """
        if state == COMPLETED:
            rows = tx.all(self.q(
                "WITH d AS (UPDATE {s}.job_deps SET satisfied = 1 WHERE dep_id = %s AND satisfied = 0 "
                "RETURNING job_id), "
                "l AS (SELECT j.id FROM {s}.jobs j WHERE j.id IN (SELECT job_id FROM d) ORDER BY j.id FOR UPDATE) "
                "UPDATE {s}.jobs j SET waiting_on = j.waiting_on - 1 FROM l WHERE j.id = l.id RETURNING j.waiting_on"),
                (job_id,))
            return sum(1 for (waiting,) in rows if waiting == 0)
        if state in (DEAD, CANCELLED):
            todo = [(job_id, state)]
            while todo:
                dep, how = todo.pop()
                rows = tx.all(self.q(
                    f"UPDATE {{s}}.jobs SET state = 'dead', last_error = %s, updated_at = {NOW} "
                    f"WHERE state = 'pending' AND id IN "
                    f"(SELECT job_id FROM {{s}}.job_deps WHERE dep_id = %s AND satisfied = 0) RETURNING id"),
                    (f"dependency {dep} ended {how}", dep))
                todo.extend((r[0], DEAD) for r in rows)
        return 0

    def _record_attempt(self, tx: _Tx, a: Attempt) -> None:
        started, finished = tx.db_time(a.started_at), tx.db_time(a.finished_at)
        tx.cur.execute(self.q(
            f"WITH a AS (INSERT INTO {{s}}.attempts ({ATTEMPT_COLUMNS}) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)) "
            f"SELECT {{s}}.record_run(%s, %s, %s, %s, %s), {{s}}.record_series(%s, %s, %s, %s)"),
            (a.job_id, a.attempt, a.outcome, started, finished, a.exit_code, a.signal, a.error, a.stdout,
             a.stderr, a.worker, a.host, a.pid, bucket(a.duration), 0 if a.ok else 1, a.duration,
             started, finished, *series_row(a, finished)[:3], 0 if a.ok else 1))

    def leases(self) -> list[Job]:
        rows = self._read(f"SELECT {JOB_COLUMNS}, lease_expires < {NOW} FROM {{s}}.jobs WHERE state = 'processing'")
        return [self._job(r) for r in rows]

    def next_run_at(self) -> Optional[float]:
        # On this host's clock: the caller compares it with time.time().
        rows = self._read("SELECT MIN(run_at) - extract(epoch FROM clock_timestamp())::float8 "
                          "FROM {s}.jobs WHERE state IN ('pending', 'failed') AND waiting_on = 0")
        delay = rows[0][0] if rows else None
        return None if delay is None else time.time() + delay

    def has_outstanding(self, queues=None) -> bool:
        """Work a --burst pool must wait for: a running job, a retry, or a job runnable now.

        Jobs scheduled for later, held by a paused queue or waiting on such jobs do not count.
        """
        only = "AND queue = ANY(%s::text[]) " if queues else ""
        live = f"AND queue NOT IN (SELECT name FROM {{s}}.queues WHERE paused = 1) {only}"
        extra = [list(queues)] if queues else []
        rows = self._read(
            f"SELECT EXISTS (SELECT 1 FROM {{s}}.jobs WHERE state = 'processing' {only}) "
            f"OR EXISTS (SELECT 1 FROM {{s}}.jobs WHERE state = 'failed' {live}) "
            f"OR EXISTS (SELECT 1 FROM {{s}}.jobs WHERE state = 'pending' AND waiting_on = 0 "
            f"AND run_at <= {NOW} {live})", extra * 3)
        return bool(rows[0][0])

    # --- control: cancel, queues, schedules, purge ----------------------------------------------------

    def cancel_job(self, job_id: str) -> str:
        """pending or failed -> cancelled at once; processing -> asks its worker to stop it."""
        def cancel(tx: _Tx):
            # FOR UPDATE: a claim under way is waited for (and then seen), a later one skips the row.
            row = tx.all(self.q("SELECT state FROM {s}.jobs WHERE id = %s FOR UPDATE"), (job_id,))
            if not row:
                raise NotFound(f"no job with id {job_id!r}")
            state = row[0][0]
            if state == PROCESSING:
                tx.cur.execute(self.q("UPDATE {s}.jobs SET cancel_requested = 1 WHERE id = %s"), (job_id,))
                return "cancelling"
            if state not in ("pending", "failed"):
                raise Conflict(f"job {job_id!r} is {state}: nothing to cancel")
            tx.cur.execute(self.q(f"UPDATE {{s}}.jobs SET state = 'cancelled', last_error = 'cancelled by user', "
                                  f"updated_at = {NOW} WHERE id = %s"), (job_id,))
            self._settle_dependents(tx, job_id, CANCELLED)
            return CANCELLED
        return self._write(cancel)

    def cancel_requested(self, job_id: str, token: int) -> bool:
        rows = self._read("SELECT cancel_requested FROM {s}.jobs WHERE id = %s AND lease_token = %s", (job_id, token))
        return bool(rows and rows[0][0])

    def set_queue(self, name: str, concurrency=..., paused=None) -> dict:
        def change(tx: _Tx):
            tx.cur.execute(self.q("INSERT INTO {s}.queues (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"), (name,))
            if concurrency is not ...:
                tx.cur.execute(self.q("UPDATE {s}.queues SET concurrency = %s WHERE name = %s"), (concurrency, name))
            if paused is not None:
                tx.cur.execute(self.q("UPDATE {s}.queues SET paused = %s WHERE name = %s"), (int(paused), name))
        self._write(change)
        return next(q for q in self.queues() if q["name"] == name)

    def queues(self) -> list[dict]:
        rows = self._read(
            "SELECT name, MAX(concurrency), MAX(paused), count(*) FILTER (WHERE state = 'pending'), "
            "count(*) FILTER (WHERE state = 'processing') FROM ("
            "SELECT name, concurrency, paused, NULL::text AS state FROM {s}.queues UNION ALL "
            "SELECT queue, NULL, 0, state FROM {s}.jobs WHERE state IN ('pending', 'processing')) AS x "
            'GROUP BY name ORDER BY name COLLATE "C"')
        return [{"name": n, "concurrency": c, "paused": bool(p), "pending": int(pe), "processing": int(pr)}
                for n, c, p, pe, pr in rows]

    def add_schedule(self, name: str, cron: str, spec: dict, missed: str, last_tick: float,
                     replace: bool = False) -> None:
        def add(tx: _Tx):
            upsert = (" ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, spec = EXCLUDED.spec, "
                      "missed = EXCLUDED.missed, last_tick = EXCLUDED.last_tick, created_at = EXCLUDED.created_at"
                      if replace else "")
            try:
                tx.cur.execute(self.q(f"INSERT INTO {{s}}.schedules VALUES (%s, %s, %s, %s, %s, {NOW}){upsert}"),
                               (name, cron, json.dumps(spec), missed, last_tick))
            except self.pg.errors.UniqueViolation:
                raise Conflict(f"a schedule named {name!r} already exists") from None
        self._write(add)

    def remove_schedule(self, name: str) -> bool:
        def remove(tx: _Tx):
            tx.cur.execute(self.q("DELETE FROM {s}.schedules WHERE name = %s"), (name,))
            return tx.cur.rowcount == 1
        return self._write(remove)

    def schedules(self) -> list[dict]:
        rows = self._read('SELECT name, cron, spec, missed, last_tick, created_at FROM {s}.schedules '
                          'ORDER BY name COLLATE "C"')
        return [schedule_from_row(row) for row in rows]

    def fire_schedule(self, name: str, last_tick: float, tick: float, jobs: list[Job]) -> bool:
        """Advance a schedule from ``last_tick`` to ``tick`` and enqueue ``jobs``, once across all pools.

        The compare-and-set and the insert are one transaction: a second pool's UPDATE waits for the
        first's row lock, then finds last_tick moved (READ COMMITTED re-checks the row) and stores nothing.
        """
        def fire(tx: _Tx):
            tx.cur.execute(self.q("UPDATE {s}.schedules SET last_tick = %s WHERE name = %s AND last_tick = %s"),
                           (tick, name, last_tick))
            moved = tx.cur.rowcount == 1
            if moved and jobs:
                self._store_jobs(tx, jobs)
            return moved
        try:
            fired = self._write(fire)
        except _Duplicate:
            raise Conflict(self._duplicate_message(jobs)) from None
        if fired and jobs:
            self.notify()
        return fired

    def purge(self, states, before: float) -> int:
        def purge(tx: _Tx):
            ids = [r[0] for r in tx.all(self.q("DELETE FROM {s}.jobs WHERE state = ANY(%s::text[]) AND updated_at < %s "
                                               "RETURNING id"), (list(states), tx.db_time(before)))]
            if ids:
                tx.cur.execute(self.q("DELETE FROM {s}.attempts WHERE job_id = ANY(%s::text[])"), (ids,))
                tx.cur.execute(self.q("DELETE FROM {s}.job_deps WHERE job_id = ANY(%s::text[])"), (ids,))
                tx.cur.execute(self.q("DELETE FROM {s}.output_chunks WHERE job_id = ANY(%s::text[])"), (ids,))
            return len(ids)
        return self._write(purge)

    # --- live output -----------------------------------------------------------------------------

    def append_output(self, job_id: str, attempt: int, chunks: list, keep: dict) -> None:
        def append(tx: _Tx):
            tx.cur.executemany(self.q(
                f'INSERT INTO {{s}}.output_chunks (job_id, attempt, stream, "offset", data, written_at) '
                f"VALUES (%s, %s, %s, %s, %s, {NOW})"),
                [(job_id, attempt, stream, offset, data) for stream, offset, data in chunks])
            for stream, (head_end, window) in keep.items():
                if window > head_end:     # the middle of a long output is not kept (the cap)
                    tx.cur.execute(self.q(
                        'DELETE FROM {s}.output_chunks WHERE job_id = %s AND attempt = %s AND stream = %s '
                        'AND "offset" >= %s AND "offset" + length(data) <= %s'),
                        (job_id, attempt, stream, head_end, window))
            tx.cur.execute("SELECT pg_notify(%s, %s)", (self.output_channel, job_id))   # sent at COMMIT
        self._write(append)

    def output_chunks(self, job_id: str, attempt: int, after: int = 0) -> list:
        return [(seq, stream, offset, bytes(data)) for seq, stream, offset, data in self._read(
            'SELECT seq, stream, "offset", data FROM {s}.output_chunks WHERE job_id = %s AND attempt = %s '
            "AND seq > %s ORDER BY seq", (job_id, attempt, after))]

    EXPIRED_OUTPUT = (f"FROM {{s}}.output_chunks c WHERE c.written_at < {NOW} - %s AND NOT EXISTS (SELECT 1 "
                      f"FROM {{s}}.jobs j WHERE j.id = c.job_id AND j.state = 'processing' AND j.attempts = c.attempt)")

    def expire_output(self, older_than: float) -> int:
        if not self._read(f"SELECT 1 {self.EXPIRED_OUTPUT} LIMIT 1", (older_than,)):
            return 0                      # a read: most calls find nothing
        return self._auto(f"DELETE {self.EXPIRED_OUTPUT}", (older_than,)).rowcount

    def output_listener(self):
        return PGListener(self, f'"{self.output_channel}"')

    # --- settings --------------------------------------------------------------------------------

    def get_settings(self) -> dict:
        return settings_from_rows(self._read("SELECT key, value FROM {s}.settings"))

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
        return stats_summary(total, failed, total_duration, first, last, hist, recent, counts)

    # --- the dashboard and /metrics: reads that stay cheap at any number of jobs -----------------------

    def backfill_series(self, tx: _Tx) -> None:
        """Migration 3: the last day of stored attempts into the per-minute ring (once)."""
        rows = tx.all(self.q(f"SELECT started_at, finished_at, outcome FROM {{s}}.attempts "
                             f"WHERE finished_at >= {NOW} - 86400"))
        tx.cur.executemany(self.q("INSERT INTO {s}.run_series VALUES (%s, %s, nextval('{s}.stripes'), %s, %s, %s)"),
                           series_backfill(rows))

    def queue_counts(self) -> dict:
        rows = self._read("SELECT queue, state, sum(n) FROM {s}.queue_counts GROUP BY queue, state "
                          'HAVING sum(n) <> 0 ORDER BY queue COLLATE "C", state')
        out: dict = {}
        for queue, state, n in rows:
            out.setdefault(queue, {})[state] = int(n)
        return out

    def oldest_pending(self) -> dict:
        """Seconds since each queue's earliest-enqueued pending job was enqueued: an index seek per queue."""
        def read(cur):
            queues = cur.execute(self.q("SELECT queue FROM {s}.queue_counts WHERE state = 'pending' "
                                        "GROUP BY queue HAVING sum(n) > 0")).fetchall()
            out = {}
            for (queue,) in queues:
                row = cur.execute(self.q(f"SELECT {NOW} - created_at FROM {{s}}.jobs WHERE queue = %s "
                                         f"AND state = 'pending' ORDER BY seq LIMIT 1"), (queue,)).fetchone()
                if row:
                    out[queue] = max(0.0, row[0])
            return out
        return self._run(read, write=False)

    def queue_settings(self) -> list[dict]:
        """Queues that have a limit or a pause set (from their own table, not by counting jobs)."""
        rows = self._read('SELECT name, concurrency, paused FROM {s}.queues ORDER BY name COLLATE "C"')
        return [{"name": n, "concurrency": c, "paused": bool(p)} for n, c, p in rows]

    def run_totals(self) -> dict:
        def read(cur):
            total, failed, duration = cur.execute(self.q(
                "SELECT COALESCE(SUM(total_runs), 0), COALESCE(SUM(failed_runs), 0), "
                "COALESCE(SUM(total_duration), 0) FROM {s}.run_stats")).fetchone()
            hist = cur.execute(self.q("SELECT bucket, SUM(n) FROM {s}.duration_hist GROUP BY bucket "
                                      "ORDER BY bucket")).fetchall()
            return {"runs": int(total), "failed": int(failed), "duration_sum": float(duration),
                    "histogram": [(b, int(n)) for b, n in hist]}
        return self._run(read, write=False)

    def series(self, window: float, step: int) -> list[dict]:
        def read(cur):
            now = cur.execute(f"SELECT {NOW}").fetchone()[0]
            rows = cur.execute(self.q("SELECT minute * 60 / %s, bucket, sum(n), sum(failed) FROM {s}.run_series "
                                      "WHERE minute >= %s GROUP BY 1, 2"),
                               (step, int((now - window) // 60))).fetchall()
            return now, rows
        now, rows = self._run(read, write=False)
        return series_points(rows, now, window, step)

    def page_jobs(self, state=None, queue=None, text=None, before=None, limit=50) -> dict:
        return keyset_page(self._read, "{s}.jobs", "%s", lambda column: f"strpos({column}, %s)", state, queue,
                           text, before, limit)

    # --- wake-ups --------------------------------------------------------------------------------------

    def notify(self) -> None:
        """NOTIFY the schema's channel; best effort (a lost wake-up costs at most a poll interval)."""
        try:
            self._connection().execute(f"NOTIFY {self.channel}")
        except self.pg.Error:
            self._drop()

    def listener(self, name: str):
        return PGListener(self)


_DISOWNED: list = []


def disown(conn) -> None:
    """Forget a connection this process inherited across fork, without a word on its socket.

    Its parent still talks to the server over the same socket: a query from here would mix the two
    processes' results, and closing it would end the parent's session (psycopg sends Terminate). So
    the descriptor is pointed at /dev/null (whatever is written to it later, by psycopg's finalizer
    too, goes nowhere) and the object is kept, never used again.
    """
    try:
        fd = conn.fileno()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
    except Exception:                 # already closed: nothing of the parent's is left to protect
        pass
    _DISOWNED.append(conn)


class PGListener:
    """A dedicated autocommit connection that LISTENs on the schema's channel.

    The worker selects on ``fileno()``. When the server goes away the socket turns readable,
    ``drain()`` notices and drops it, and the next ``fileno()`` reconnects and reports itself
    ready once, so the worker looks for work it may have missed while not listening.
    """

    def __init__(self, store: PostgresStore, channel: Optional[str] = None):
        self.store = store
        self.channel = channel or store.channel
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
            conn.execute(f"LISTEN {self.channel}")
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
