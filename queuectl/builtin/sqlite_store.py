"""The built-in SQLite storage backend: one file, WAL, BEGIN IMMEDIATE, fenced leases.

Idle workers are woken through Unix datagram sockets in a folder beside the store
(``.NAME.wake/``): enqueue sends one byte to each, a slow poll covers anything missed.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import sys
import time
from operator import itemgetter
from typing import TYPE_CHECKING, Optional

from queuectl import hookimpl
from queuectl.config import Setting, choice, posix_path
from queuectl.plugins import private_group
from queuectl._lazy import LazyImport
from queuectl.errors import Conflict, NotFound, QueueError, SchemaError, StoreBusy, StoreMissing, StoreReplaced
from queuectl.models import CANCELLED, COMPLETED, DEAD, PROCESSING, Attempt, Job
from queuectl.builtin._rows import (
    ATTEMPT_COLUMNS, EDIT_SET, JOB_COLUMNS, N_JOB_COLUMNS, attempt_from_row, edit_values,
    finished_job, job_filters, job_from_row, keyset_page, receipt_conflict, receipt_from_row, schedule_from_row,
    series_backfill, series_points, series_row, settings_from_rows, split_ids, stats_summary,
    summaries_sql, summary_from_row,
)
from queuectl.store import Transition, WorkerInfo, blocked_message

json = LazyImport("json", globals())

if TYPE_CHECKING:
    import socket       # imported where it is used: enqueue rarely needs it

SCHEMA_VERSION = 6
WAL_SIZE_LIMIT = 4 * 1024 * 1024   # bytes the -wal file is cut back to after a checkpoint
KEEP_WAL = 512 * 1024     # a -wal up to this size is left for the next command (see _close_keeping_wal)
IDENTITY_CHECK = 1.0      # seconds between checks that the store file was not deleted or replaced

ACTIVE = "('pending', 'failed', 'processing')"      # (schema 2's index; since 6: LIVE, below)
# A job that is not finished, as comparisons: an IN list of three or more builds a temporary b-tree
# each time a statement evaluates it, and a partial index's WHERE is evaluated on every state change.
LIVE = "(state = 'pending' OR state = 'failed' OR state = 'processing')"
# One attempt into the per-minute ring (run_series): a slot holding an older minute starts over.
SERIES_UPSERT = ("INSERT INTO run_series (slot, bucket, minute, n, failed) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT(slot, bucket) DO UPDATE SET "
                 "n = CASE WHEN minute = excluded.minute THEN n + excluded.n ELSE excluded.n END, "
                 "failed = CASE WHEN minute = excluded.minute THEN failed + excluded.failed ELSE excluded.failed END, "
                 "minute = excluded.minute")
# Since schema 6 the same table holds the all-time tallies too, under slot ALL_TIME (its minute never
# changes, so it only adds up): one statement and one page per attempt instead of three tables.
ALL_TIME = -1
TALLY_UPSERT = (
    "INSERT INTO run_series (slot, bucket, minute, n, failed, duration, first_started, last_finished) "
    f"VALUES (?, ?, ?, 1, ?, ?, ?, ?), ({ALL_TIME}, ?, 0, 1, ?, ?, ?, ?) ON CONFLICT(slot, bucket) DO UPDATE SET "
    "n = CASE WHEN minute = excluded.minute THEN n + 1 ELSE 1 END, "
    "failed = CASE WHEN minute = excluded.minute THEN failed + excluded.failed ELSE excluded.failed END, "
    "duration = CASE WHEN minute = excluded.minute THEN duration + excluded.duration ELSE excluded.duration END, "
    "first_started = CASE WHEN minute = excluded.minute THEN MIN(COALESCE(first_started, excluded.first_started), "
    "excluded.first_started) ELSE excluded.first_started END, "
    "last_finished = CASE WHEN minute = excluded.minute THEN MAX(COALESCE(last_finished, excluded.last_finished), "
    "excluded.last_finished) ELSE excluded.last_finished END, "
    "minute = excluded.minute")
TOTALS = (f"SELECT COALESCE(SUM(n), 0), COALESCE(SUM(failed), 0), COALESCE(SUM(duration), 0.0), MIN(first_started), "
          f"MAX(last_finished) FROM run_series WHERE slot = {ALL_TIME}")
HISTOGRAM = f"SELECT bucket, n FROM run_series WHERE slot = {ALL_TIME} ORDER BY bucket"
# Queues whose jobs may not start now: paused, or at their concurrency limit (counted across all hosts).
BLOCKED_QUEUES = ("SELECT q.name FROM queues q WHERE q.paused = 1 OR (q.concurrency IS NOT NULL AND "
                  "q.concurrency <= (SELECT COUNT(*) FROM jobs p WHERE p.state = 'processing' AND p.queue = q.name))")

MIGRATIONS = {
    1: [
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            command TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            tries INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            queue TEXT NOT NULL DEFAULT 'default',
            executor TEXT NOT NULL DEFAULT 'shell',
            cwd TEXT, env TEXT, timeout REAL, source TEXT, fields TEXT,
            created_at REAL NOT NULL, updated_at REAL NOT NULL, run_at REAL NOT NULL,
            last_error TEXT, exit_code INTEGER,
            lease_owner TEXT, lease_host TEXT, lease_pid INTEGER, lease_pid_start INTEGER, lease_pgid INTEGER,
            lease_expires REAL, lease_token INTEGER NOT NULL DEFAULT 0, run_id TEXT, started_at REAL)""",
        # The claim index matches the claim's ORDER BY and holds only runnable jobs.
        "CREATE INDEX jobs_claim ON jobs(priority DESC, run_at, seq) WHERE state IN ('pending', 'failed')",
        "CREATE INDEX jobs_state ON jobs(state, seq)",
        "CREATE INDEX jobs_processing ON jobs(lease_expires) WHERE state = 'processing'",
        """CREATE TABLE attempts (
            job_id TEXT NOT NULL, attempt INTEGER NOT NULL, outcome TEXT NOT NULL,
            started_at REAL NOT NULL, finished_at REAL NOT NULL, exit_code INTEGER, signal INTEGER, error TEXT,
            stdout BLOB, stderr BLOB, worker TEXT, host TEXT, pid INTEGER,
            PRIMARY KEY (job_id, attempt))""",
        "CREATE INDEX attempts_finished ON attempts(finished_at)",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE workers (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
            pid_start INTEGER, pool_id TEXT, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL,
            stop_requested INTEGER NOT NULL DEFAULT 0)""",
        # Counts and duration histograms are kept current on every change, never scanned.
        "CREATE TABLE state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        """CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
            INSERT INTO state_counts VALUES (NEW.state, 1) ON CONFLICT(state) DO UPDATE SET n = n + 1; END""",
        """CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state; END""",
        """CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
            INSERT INTO state_counts VALUES (NEW.state, 1) ON CONFLICT(state) DO UPDATE SET n = n + 1; END""",
        "CREATE TABLE duration_hist (bucket INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        """CREATE TABLE run_stats (id INTEGER PRIMARY KEY CHECK (id = 1), total_runs INTEGER NOT NULL,
            failed_runs INTEGER NOT NULL, total_duration REAL NOT NULL, first_started REAL, last_finished REAL)""",
        "INSERT INTO run_stats VALUES (1, 0, 0, 0.0, NULL, NULL)",
        # Receipts make a source's delivery exactly-once: recorded in the same transaction as its jobs.
        """CREATE TABLE receipts (key TEXT PRIMARY KEY, name TEXT, sha256 TEXT, job_ids TEXT NOT NULL,
            created_at REAL NOT NULL)""",
    ],
    # Scheduling and control: dependencies, unique keys, cancel, queues with limits, recurring jobs.
    2: [
        "ALTER TABLE jobs ADD COLUMN unique_key TEXT",
        "ALTER TABLE jobs ADD COLUMN after_ids TEXT",
        "ALTER TABLE jobs ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX jobs_claim",
        "CREATE INDEX jobs_claim ON jobs(priority DESC, run_at, seq) WHERE state IN ('pending', 'failed') "
        "AND waiting_on = 0",
        f"CREATE UNIQUE INDEX jobs_unique_key ON jobs(unique_key) WHERE unique_key IS NOT NULL AND state IN {ACTIVE}",
        "CREATE INDEX jobs_processing_queue ON jobs(queue) WHERE state = 'processing'",
        "CREATE INDEX jobs_finished ON jobs(state, updated_at) WHERE state IN ('completed', 'dead', 'cancelled')",
        # A satisfied dependency stays satisfied even if the job it named is purged later.
        """CREATE TABLE job_deps (job_id TEXT NOT NULL, dep_id TEXT NOT NULL, satisfied INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, dep_id))""",
        "CREATE INDEX job_deps_waiting ON job_deps(dep_id) WHERE satisfied = 0",
        "CREATE TABLE queues (name TEXT PRIMARY KEY, concurrency INTEGER, paused INTEGER NOT NULL DEFAULT 0)",
        """CREATE TABLE schedules (name TEXT PRIMARY KEY, cron TEXT NOT NULL, spec TEXT NOT NULL,
            missed TEXT NOT NULL, last_tick REAL, created_at REAL NOT NULL)""",
        # New jobs are counted once per batch by add_jobs: a row trigger was half of bulk enqueue's cost.
        "DROP TRIGGER jobs_count_insert",
    ],
    # Live output: what a running attempt printed so far, in chunks (see queuectl/output.py).
    3: [
        """CREATE TABLE output_chunks (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
            attempt INTEGER NOT NULL, stream TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
            written_at REAL NOT NULL)""",
        "CREATE INDEX output_chunks_attempt ON output_chunks(job_id, attempt, seq)",
        "CREATE INDEX output_chunks_written ON output_chunks(written_at)",
    ],
    # Issue 13, the command line: labels, argv jobs, edit history; indexes for `list`'s filters.
    4: [
        "ALTER TABLE jobs ADD COLUMN labels TEXT",
        "ALTER TABLE jobs ADD COLUMN argv TEXT",
        "ALTER TABLE jobs ADD COLUMN edits TEXT",
        # One row per label, so `list --label K=V` is an index lookup rather than a scan of every job.
        """CREATE TABLE job_labels (key TEXT NOT NULL, value TEXT NOT NULL, job_id TEXT NOT NULL,
            PRIMARY KEY (key, value, job_id)) WITHOUT ROWID""",
        "CREATE INDEX job_labels_job ON job_labels(job_id)",
        "CREATE INDEX jobs_queue ON jobs(queue, seq)",
        "CREATE INDEX jobs_created ON jobs(created_at)",
    ],
    # The dashboard and /metrics: jobs per queue and state, and a per-minute rollup of attempts,
    # both kept current so that neither ever scans the jobs or the attempts.
    5: [
        "CREATE TABLE queue_counts (queue TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, "
        "PRIMARY KEY (queue, state))",
        "INSERT INTO queue_counts SELECT queue, state, COUNT(*) FROM jobs GROUP BY queue, state",
        """CREATE TRIGGER jobs_queue_count_delete AFTER DELETE ON jobs BEGIN
            UPDATE queue_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state; END""",
        """CREATE TRIGGER jobs_queue_count_update AFTER UPDATE OF state, queue ON jobs
            WHEN OLD.state <> NEW.state OR OLD.queue <> NEW.queue BEGIN
            UPDATE queue_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
            INSERT INTO queue_counts VALUES (NEW.queue, NEW.state, 1)
                ON CONFLICT(queue, state) DO UPDATE SET n = n + 1; END""",
        # A queue's oldest pending job, and a job list filtered by queue and state, by index.
        "CREATE INDEX jobs_queue_state ON jobs(queue, state, seq)",
        # A ring of one day of minutes (slot = minute % 1440): bounded, never pruned.
        """CREATE TABLE run_series (slot INTEGER NOT NULL, bucket INTEGER NOT NULL, minute INTEGER NOT NULL,
            n INTEGER NOT NULL, failed INTEGER NOT NULL, PRIMARY KEY (slot, bucket))""",
        lambda conn: conn.executemany(SERIES_UPSERT, series_backfill(conn.execute(
            "SELECT started_at, finished_at, outcome FROM attempts WHERE finished_at >= ?", (time.time() - 86400,)))),
    ],
    # Fewer pages written per attempt (16 -> 11 of the WAL's 4 KiB frames for a record-and-claim commit):
    # the per-state counts are the per-queue counts summed (state_counts and its triggers go), the
    # all-time tallies move into run_series (slot ALL_TIME), and the two partial indexes of running
    # jobs become one.
    6: [
        "DROP TRIGGER jobs_count_update",
        "DROP TRIGGER jobs_count_delete",
        "DROP TABLE state_counts",
        "ALTER TABLE run_series ADD COLUMN duration REAL NOT NULL DEFAULT 0",
        "ALTER TABLE run_series ADD COLUMN first_started REAL",
        "ALTER TABLE run_series ADD COLUMN last_finished REAL",
        f"INSERT INTO run_series (slot, bucket, minute, n, failed) SELECT {ALL_TIME}, bucket, 0, n, 0 FROM duration_hist",
        # the totals that are not per bucket ride on the first bucket's row: they are only ever summed
        f"UPDATE run_series SET failed = (SELECT failed_runs FROM run_stats), "
        f"duration = (SELECT total_duration FROM run_stats), first_started = (SELECT first_started FROM run_stats), "
        f"last_finished = (SELECT last_finished FROM run_stats) "
        f"WHERE slot = {ALL_TIME} AND bucket = (SELECT MIN(bucket) FROM run_series WHERE slot = {ALL_TIME})",
        "DROP TABLE duration_hist",
        "DROP TABLE run_stats",
        "DROP INDEX jobs_processing_queue",
        "DROP INDEX jobs_processing",
        "CREATE INDEX jobs_processing ON jobs(queue, lease_expires) WHERE state = 'processing'",
        # never chosen by the planner (purge and the recent failures filter on a bound state), yet
        # written on every finish
        "DROP INDEX jobs_finished",
        "DROP INDEX jobs_unique_key",
        f"CREATE UNIQUE INDEX jobs_unique_key ON jobs(unique_key) WHERE unique_key IS NOT NULL AND {LIVE}",
    ],
}


# Does a job wait for this one? (finish settles its dependents then)
AWAITED = "EXISTS (SELECT 1 FROM job_deps WHERE dep_id = jobs.id AND satisfied = 0)"
FINISHED_FLAGS = f"SELECT waiting_on, cancel_requested, {AWAITED} FROM jobs WHERE id = ?"
FINISHED_ROW = f"SELECT {JOB_COLUMNS}, {AWAITED} FROM jobs WHERE id = ?"
CLAIMED_ROW = f"SELECT {JOB_COLUMNS} FROM jobs WHERE seq = ?"
SCHEMA_VERSION_ROW = "SELECT value FROM meta WHERE key = 'schema_version'"


@hookimpl
def queuectl_register_storage(register):
    register("sqlite", SQLiteStore, schemes=("sqlite",))


@hookimpl
def queuectl_register_settings(register):
    register(Setting("durability", "normal", choice("normal", "full"),
                     "normal: survives a crash of any process; full: every acknowledged write survives "
                     "power loss (synchronous=FULL).", file_only=True))


def _lower(text):
    """SQL ``queuectl_lower(command)``: the command lower-cased beyond ASCII (for ``list --grep``)."""
    return text.lower() if isinstance(text, str) else text


def check_store_file(path: str) -> tuple:
    """Refuse a store (or its -wal/-shm) that another user owns or can write: whoever writes the
    store decides what our workers run. Root is held to this too. Returns the store's identity."""
    identity = None
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        try:
            info = os.stat(name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise QueueError(f"cannot use the store {name}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise QueueError(f"refusing the store {name}: it is not a regular file")
        if info.st_uid != os.geteuid():
            raise QueueError(f"refusing the store {name}: it is owned by another user (uid {info.st_uid})")
        if info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and not private_group(info.st_gid)):
            raise QueueError(f"refusing the store {name}: other users can write it (run: chmod go-w {name})")
        if identity is None:
            identity = (info.st_dev, info.st_ino)
    if identity is None:
        raise QueueError(f"no store at {path}")
    return identity


_INHERITED: list = []        # connections a forked child found open: kept, never used or closed


_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def file_uri(path: str) -> str:
    """``pathlib.Path(path).as_uri()`` of an absolute path, without importing pathlib and urllib."""
    return "file://" + "".join(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in os.fsencode(posix_path(path)))


#: The columns a new job's row gives, in the order of SQLiteStore._row.
INSERT_COLUMNS = ("id", "command", "state", "max_retries", "priority", "queue", "executor", "cwd", "env", "timeout",
                  "source", "fields", "created_at", "updated_at", "run_at", "unique_key", "after_ids", "labels", "argv")
_INSERTS: dict = {}      # SQLiteStore._insert_rows: (INSERT statement, row picker) by the row's NULL columns


class SQLiteStore:
    def __init__(self, url: str, queue):
        path = url[len("sqlite://"):] if url.startswith("sqlite://") else url
        self.path = posix_path(path)
        self._abspath = os.path.abspath(path)        # the store's path when the folder changes
        self.url = self.path
        self.queue = queue
        self.lock_timeout: Optional[float] = queue.config.get("lock-timeout")
        self.durability = queue.config.get("durability")
        folder, name = os.path.split(self.path)
        self.folder = folder or "."
        self.wake_dir = os.path.join(folder, f".{name}.wake")
        self._conn: Optional[sqlite3.Connection] = None
        self._opened_version = 0                     # the schema version found when the file was opened
        self._pid = os.getpid()                      # the process that opened _conn
        self._identity: Optional[tuple] = None       # (st_dev, st_ino) of the file opened
        self._identity_checked = 0.0
        self.disk_full = False                       # said so already (once per episode)
        self._notify_sock: Optional[socket.socket] = None
        self._claimed: dict[str, Job] = {}           # jobs this handle claimed, by id, until finished

    # --- connection and transactions ------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            # Inherited across fork: SQLite forbids using it here, and closing it could touch the
            # parent's locks and WAL index. Kept (never used, never closed); this process opens its own.
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is None:
            if not os.path.isdir(self.folder):
                raise QueueError(f"the folder of the store {self.path} does not exist")
            if not os.path.lexists(self.path):
                if not self.queue.create_store:
                    raise StoreMissing(f"no store at {self.path} (check --db; 'queuectl init' creates one)")
                try:
                    os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                except FileExistsError:
                    pass                    # another process created it meanwhile: checked below
                except OSError as exc:
                    raise QueueError(f"cannot create the store {self.path}: {exc.strerror}") from None
            self._identity = check_store_file(self.path)
            known = getattr(self.queue, "store_identity", None)   # kept across reopenings (a pool's forks)
            if known is not None and known != self._identity:
                raise StoreReplaced(f"the store {self.path} was replaced by another file while in use; "
                                    f"stopping (restart against the store now at that path)")
            self.queue.store_identity = self._identity
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0,
                                       check_same_thread=False)
                self._opened_version = self._retry(self._version_if_ours, conn)
                self._retry(self._setup, conn)
            except sqlite3.DatabaseError as exc:
                raise QueueError(f"cannot open the store {self.path}: {exc}") from None
            self._conn, self._pid = conn, os.getpid()
            self._identity_checked = time.monotonic()
        elif time.monotonic() - self._identity_checked >= IDENTITY_CHECK:
            self._check_identity()
        return self._conn

    def _check_identity(self) -> None:
        """Is the file at our path still the one we opened? A store deleted or replaced under us
        would split the queue in two (we would go on writing to the old file)."""
        self._identity_checked = time.monotonic()
        try:
            info = os.stat(self.path)
            now = (info.st_dev, info.st_ino)
        except OSError:
            now = None
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise StoreReplaced(f"the store {self.path} was {what} while in use; "
                                f"stopping (restart against the store now at that path)")

    def _version_if_ours(self, conn: sqlite3.Connection) -> int:
        """The schema version of the file just opened (0: an empty database), before anything is
        changed in it: an SQLite database of another program (tables, but no queuectl ``meta`` with a
        schema version) is refused, not given queuectl's tables and the WAL journal mode."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return 0
        if "meta" in tables:
            try:
                row = conn.execute(SCHEMA_VERSION_ROW).fetchone()
                if row is not None and str(row[0]).isdigit():
                    return int(row[0])
            except sqlite3.OperationalError as exc:
                if "no such column" not in str(exc):
                    raise                   # locked, busy: waited out by _retry
        raise QueueError(f"refusing the store {self.path}: it is an SQLite database of another program "
                         f"(it has tables but not queuectl's), not a queuectl store")

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'full' else 'NORMAL'}")
        # A burst of writes (live output of a job printing fast) grows the WAL; once it is checkpointed
        # the file is cut back to this size instead of keeping its largest size for good.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # No busy handler: SQLite's sleeps 1 ms, then 2, 5, ... while the lock is held for ~0.2 ms;
        # _retry waits it out in finer steps (two workers spent a fifth of their time in those sleeps).
        conn.execute("PRAGMA busy_timeout=0")

    def _retry(self, fn, *args):
        """Wait out "database is locked" instead of failing; workers wait forever, commands lock-timeout.

        A full disk is waited out the same way by workers and pools (patient: lock_timeout None), so a
        finished result is recorded once there is space again; a command fails at once. Each failed
        transaction was rolled back, so nothing partial is left either way.
        """
        start = time.monotonic()
        delay, warned = 0.0001, False
        while True:
            try:
                result = fn(*args)
                self.disk_full = False
                return result
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if "full" in message:
                    if self.lock_timeout is not None:
                        raise QueueError(f"cannot write the store {self.path}: the disk is full; "
                                         f"nothing was changed") from None
                    if not self.disk_full:       # one line per episode, however many calls wait
                        print(f"queuectl: store {self.path}: the disk is full; waiting for space "
                              f"(retrying every second)", file=sys.stderr)
                        self.disk_full = True
                    time.sleep(1.0)
                    continue
                if "locked" not in message and "busy" not in message:
                    raise QueueError(f"store {self.path}: {message}") from None
            except sqlite3.DatabaseError as exc:   # garbage in the file: "database disk image is malformed"
                if type(exc) is not sqlite3.DatabaseError:
                    raise                          # a constraint (IntegrityError): the caller's to name
                raise QueueError(f"the store {self.path} is damaged ({exc}); restore it from a backup") from None
            waited = time.monotonic() - start
            if self.lock_timeout is not None and waited >= self.lock_timeout:
                raise StoreBusy(f"the store {self.path} stayed locked by another process "
                                f"for {waited:.0f} s") from None
            if waited > 2 and not warned and self.lock_timeout is None:      # a command says it once, failing
                print(f"queuectl: store {self.path} is locked by another process; waiting", file=sys.stderr)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _write(self, fn, *args):
        def attempt():
            conn = self.conn
            # One cursor for the whole transaction, handed to fn as its ``conn``: Connection.execute makes
            # and frees a cursor per statement (about 1,300 instructions each; a worker's record-and-claim
            # runs ten). fn reads each result before its next statement, as a shared cursor needs.
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                result = fn(cur, *args)
                cur.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return self._retry(attempt)

    def _read(self, sql: str, params=()) -> list:
        return self._retry(lambda: self.conn.execute(sql, params).fetchall())

    def init(self) -> None:
        self.conn                           # opened: the file is a store, or empty (_version_if_ours)
        if self._opened_version == SCHEMA_VERSION:
            return
        self._write(self._migrate)
        self._opened_version = SCHEMA_VERSION

    @staticmethod
    def _version(conn) -> int:
        row = conn.execute(SCHEMA_VERSION_ROW).fetchone()
        return int(row[0]) if row else 0

    def _migrate(self, conn) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = self._version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaError(f"the store {self.path} has schema version {version}, newer than this queuectl "
                              f"understands ({SCHEMA_VERSION}); upgrade queuectl before using it")
        for target in sorted(v for v in MIGRATIONS if v > version):
            for statement in MIGRATIONS[target]:
                statement(conn) if callable(statement) else conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(target),))

    def close(self) -> None:
        if self._conn is not None:
            if self._pid == os.getpid():
                self._close_keeping_wal(self._conn)
            else:
                _INHERITED.append(self._conn)      # a fork's: see conn
            self._conn = None
        if self._notify_sock is not None:
            self._notify_sock.close()
            self._notify_sock = None

    def _close_keeping_wal(self, conn: sqlite3.Connection) -> None:
        """Close our connection without the checkpoint SQLite runs when the last connection closes,
        while the WAL is small (at most KEEP_WAL bytes).

        That checkpoint, and the new WAL the next command then starts, cost a short command four
        fdatasync calls (the WAL's first frame; the WAL and the database at the checkpoint): 3 ms,
        more than the rest of its store work. SQLite leaves the WAL in place when the connection
        closing last cannot checkpoint, and a read-only one cannot (``sqlite3WalCheckpoint`` refuses
        a read-only WAL): so a read-only connection is opened first and closed last. The files are then as a running pool leaves them (or a
        crash): the next connection reads the WAL back (documented SQLite behaviour, ``wal.html``).
        Durability is what ``synchronous`` promises: NORMAL loses nothing to a crash of any
        process and cannot be corrupted by a power loss, which may take the last commits (a command
        that ended also took them to the disk before, as a side effect, when no pool was running);
        FULL syncs every commit. Past KEEP_WAL the close is the plain one, so the WAL each opener
        must read back stays short (reading 512 KiB of it costs about 0.6M instructions).
        """
        guard = None
        try:
            small = os.stat(f"{self._abspath}-wal").st_size <= KEEP_WAL      # the file guard opens
        except OSError:
            small = False
        if small:
            try:
                guard = sqlite3.connect(f"{file_uri(self._abspath)}?mode=ro", uri=True,
                                        isolation_level=None, check_same_thread=False)
                guard.execute("PRAGMA schema_version").fetchone()   # a read: holds the shared lock
            except sqlite3.Error:
                if guard is not None:
                    guard.close()
                guard = None                  # the plain close, as SQLite does it
        conn.close()
        if guard is not None:
            guard.close()

    def describe(self) -> dict:
        return {"backend": "sqlite", "location": self.path,
                "schema_version": self._retry(self._version, self.conn), "durability": self.durability}

    # --- rows --------------------------------------------------------------------------------

    _job = staticmethod(job_from_row)
    _attempt = staticmethod(attempt_from_row)

    # --- jobs ----------------------------------------------------------------------------------

    INSERT_JOB = (f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(INSERT_COLUMNS))})")

    @staticmethod
    def _row(j: Job) -> tuple:
        return (j.id, j.command, j.state, j.max_retries, j.priority, j.queue, j.executor, j.cwd,
                json.dumps(j.env) if j.env else None, j.timeout, j.source,
                json.dumps(j.fields) if j.fields else None, j.created_at, j.updated_at, j.run_at,
                j.unique_key, json.dumps(j.after) if j.after else None,
                json.dumps(j.labels) if j.labels else None, json.dumps(j.argv) if j.argv is not None else None)

    # The columns of INSERT_JOB that may be NULL, by their place in a row of _row: cwd, env, timeout,
    # source, fields, unique_key, after_ids, labels, argv (none has a default but NULL).
    NULLABLE = (7, 8, 9, 10, 11, 15, 16, 17, 18)

    @staticmethod
    def _nulls(r: tuple) -> tuple:
        return (r[7] is None, r[8] is None, r[9] is None, r[10] is None, r[11] is None, r[15] is None,
                r[16] is None, r[17] is None, r[18] is None)

    def _insert_rows(self, conn, rows: list) -> None:
        """``executemany(INSERT_JOB, rows)``, each run of rows with the same NULL columns by a statement
        that leaves those columns out (they are NULL all the same). Python 3.11's sqlite3 binds a None
        through its adapter lookup, which raises and clears an AttributeError: 2.4K instructions per
        NULL, and a plain job has seven (a sixth of a bulk enqueue's instructions)."""
        from itertools import groupby

        for nulls, run in groupby(rows, self._nulls):
            statement = _INSERTS.get(nulls)
            if statement is None:
                null = {i for i, is_null in zip(self.NULLABLE, nulls) if is_null}
                kept = [i for i in range(len(INSERT_COLUMNS)) if i not in null]
                statement = _INSERTS[nulls] = (
                    f"INSERT INTO jobs ({', '.join(INSERT_COLUMNS[i] for i in kept)}) "
                    f"VALUES ({', '.join('?' * len(kept))})", itemgetter(*kept))
            conn.executemany(statement[0], map(statement[1], run))

    def add_jobs(self, jobs: list[Job], receipt: Optional[dict] = None) -> list[str]:
        return self.add_deliveries([(jobs, receipt)])[0]

    def add_deliveries(self, deliveries: list[tuple[list[Job], Optional[dict]]]) -> list[list[str]]:
        jobs = [job for batch, _ in deliveries for job in batch]

        def insert(conn):
            ids = split_ids(self._store_jobs(conn, jobs), deliveries)
            receipts = [(r["key"], r.get("name"), r.get("sha256"), json.dumps(batch_ids), time.time())
                        for (_, r), batch_ids in zip(deliveries, ids) if r is not None]
            try:
                conn.executemany("INSERT INTO receipts VALUES (?, ?, ?, ?, ?)", receipts)
            except sqlite3.IntegrityError:
                raise Conflict(receipt_conflict([r[0] for r in receipts])) from None
            return ids
        return self._write_jobs(insert, jobs)

    def _write_jobs(self, fn, jobs: list[Job]):
        try:
            return self._write(fn)
        except sqlite3.IntegrityError:
            # Named after the rollback (a savepoint per batch would cost a fifth of bulk throughput).
            raise Conflict(self._retry(self._duplicate_message, self.conn, jobs)) from None

    def _store_jobs(self, conn, jobs: list[Job]) -> list[str]:
        """Insert jobs and link their dependencies; a job dead at once takes its dependents with it."""
        ids = self._insert_jobs(conn, jobs)
        stored = set(ids)
        dead = [job.id for job in jobs if job.after and job.id in stored and self._link_dependencies(conn, job)]
        for job_id in dead:
            self._settle_dependents(conn, job_id, DEAD)
        return ids

    def _insert_jobs(self, conn, jobs: list[Job]) -> list[str]:
        """Insert in order; plain jobs in bulk, a job with a unique key one at a time (it may exist).

        The batch is counted per state with one statement each, not by a trigger per row.
        """
        ids, plain, counts = [], [], {}
        for job in jobs:
            if job.unique_key is not None:
                self._insert_rows(conn, plain)
                plain = []
                existing = conn.execute(f"SELECT id FROM jobs WHERE unique_key = ? AND {LIVE}",
                                        (job.unique_key,)).fetchone()
                if existing is not None:
                    ids.append(existing[0])
                    continue
            plain.append(self._row(job))
            ids.append(job.id)
            counts[job.queue, job.state] = counts.get((job.queue, job.state), 0) + 1
        self._insert_rows(conn, plain)
        stored = set(ids)
        conn.executemany("INSERT INTO job_labels VALUES (?, ?, ?)",
                         [(k, v, job.id) for job in jobs if job.labels and job.id in stored
                          for k, v in job.labels.items()])
        for (queue, state), n in counts.items():
            conn.execute("INSERT INTO queue_counts VALUES (?, ?, ?) ON CONFLICT(queue, state) DO UPDATE SET n = n + ?",
                         (queue, state, n, n))
        return ids

    def _link_dependencies(self, conn, job: Job) -> bool:
        """Record what ``job`` waits for; True when it is dead at once (a dependency is dead or cancelled)."""
        waiting, dead_reason = 0, None
        for dep in job.after:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (dep,)).fetchone()
            if row is None:
                raise NotFound(f"job {job.id!r} depends on {dep!r}, which does not exist")
            satisfied = row[0] == COMPLETED
            waiting += not satisfied
            if row[0] in (DEAD, CANCELLED) and dead_reason is None:
                dead_reason = f"dependency {dep} ended {row[0]}"
            conn.execute("INSERT INTO job_deps VALUES (?, ?, ?)", (job.id, dep, int(satisfied)))
        conn.execute("UPDATE jobs SET waiting_on = ? WHERE id = ?", (waiting, job.id))
        if dead_reason:
            conn.execute("UPDATE jobs SET state = 'dead', last_error = ? WHERE id = ?", (dead_reason, job.id))
        return dead_reason is not None

    def get_receipt(self, key: str) -> Optional[dict]:
        rows = self._read("SELECT key, name, sha256, job_ids, created_at FROM receipts WHERE key = ?", (key,))
        if not rows:
            return None
        return receipt_from_row(rows[0])

    @staticmethod
    def _duplicate_message(conn, jobs: list[Job]) -> str:
        seen = set()
        for job in jobs:
            if job.id in seen or conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone():
                return f"a job with id {job.id!r} already exists"
            seen.add(job.id)
        return "duplicate job id"

    def get_job(self, job_id: str) -> Optional[Job]:
        rows = self._read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def list_jobs(self, state=None, limit=None, offset=0, newest=False, **filters) -> list[Job]:
        grep = filters.get("grep")
        if grep and not grep.isascii():
            # SQLite's LIKE folds A-Z only: text beyond ASCII is compared lower-cased by Python, as
            # PostgreSQL's ILIKE does (an ASCII pattern keeps the plain LIKE, without a call per row)
            self.conn.create_function("queuectl_lower", 1, _lower, deterministic=True)
            filters = dict(filters, grep=grep.lower(), grep_column="queuectl_lower(command)")
        where, params = job_filters("?", self._label_clause, "LIKE", state, **filters)
        order = "seq DESC" if newest else "seq"
        sql = f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY {order} LIMIT ? OFFSET ?"
        jobs = [self._job(r) for r in self._read(sql, (*params, -1 if limit is None else limit, offset))]
        return jobs[::-1] if newest else jobs

    @staticmethod
    def _label_clause(key: str, value: Optional[str]) -> tuple[str, list]:
        if value is None:
            return "id IN (SELECT job_id FROM job_labels WHERE key = ?)", [key]
        return "id IN (SELECT job_id FROM job_labels WHERE key = ? AND value = ?)", [key, value]

    def find_ids(self, prefix: str, limit: int) -> list[str]:
        """Ids that start with ``prefix`` (a range on the id index; ids are ASCII)."""
        high = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self._read("SELECT id FROM jobs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?", (prefix, high, limit))
        return [r[0] for r in rows]

    def edit_job(self, job_id: str, from_states, changes: dict, edit: dict, retry_from=None) -> Job:
        def change(conn):
            rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchall()
            if not rows or rows[0][2] not in from_states:
                raise Conflict(f"job {job_id!r} is {rows[0][2] if rows else 'missing'}, "
                               f"not {' or '.join(from_states)}: it cannot be edited")
            job = self._job(rows[0])
            conn.execute(f"UPDATE jobs SET {EDIT_SET.format(m='?')}, updated_at = ? WHERE id = ?",
                         (*edit_values(job, changes, edit), time.time(), job_id))
            if "labels" in changes:
                conn.execute("DELETE FROM job_labels WHERE job_id = ?", (job_id,))
                conn.executemany("INSERT INTO job_labels VALUES (?, ?, ?)",
                                 [(k, v, job_id) for k, v in changes["labels"].items()])
            if retry_from:
                return self._retry_in(conn, job_id, retry_from)
            return self._job(conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return self._write(change)

    def counts(self) -> dict:
        return {state: n for state, n in self._read("SELECT state, SUM(n) FROM queue_counts GROUP BY state")}

    def recent_jobs(self, state: str, limit: int) -> list[Job]:
        """The jobs of one state changed last, newest first."""
        return [self._job(r) for r in self._read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY updated_at DESC LIMIT ?", (state, limit))]

    def attempts(self, job_id: str, attempt=None) -> list[Attempt]:
        sql = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ?"
        params = [job_id]
        if attempt is not None:
            sql += " AND attempt = ?"
            params.append(attempt)
        return [self._attempt(r) for r in self._read(sql + " ORDER BY attempt", params)]

    def attempt_summaries(self, job_id: str, after: int, before: int, limit: int) -> list:
        return [summary_from_row(r) for r in self._read(summaries_sql("attempts", "?"),
                                                        (job_id, after, before, limit))]

    def retry_job(self, job_id: str, from_states) -> Job:
        return self._write(self._retry_in, job_id, from_states)

    def _retry_in(self, conn, job_id: str, from_states) -> Job:
        row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row[0] not in from_states:
            raise Conflict(f"job {job_id!r} is {row[0] if row else 'missing'}, not {' or '.join(from_states)}")
        blocker = conn.execute(
            "SELECT d.dep_id, COALESCE(j.state, 'purged') FROM job_deps d LEFT JOIN jobs j ON j.id = d.dep_id "
            "WHERE d.job_id = ? AND d.satisfied = 0 AND (j.state IS NULL OR j.state IN ('dead', 'cancelled')) "
            "LIMIT 1",
            (job_id,)).fetchone()
        if blocker:
            raise Conflict(blocked_message(job_id, *blocker))
        now = time.time()
        try:
            rows = conn.execute(
                f"UPDATE jobs SET state = 'pending', tries = 0, run_at = ?, updated_at = ?, cancel_requested = 0 "
                f"WHERE id = ? RETURNING {JOB_COLUMNS}", (now, now, job_id)).fetchall()
        except sqlite3.IntegrityError:
            raise Conflict(f"job {job_id!r} cannot be retried: its unique key is held by another job") from None
        return self._job(rows[0])

    # --- claiming and leases ----------------------------------------------------------------------

    def _claim(self, conn, worker: WorkerInfo, lease_timeout: float) -> Optional[Job]:
        # Plain statements where one could do: a NOT IN (subquery) and a RETURNING each build a
        # temporary b-tree per execution, which costs about three statements (callgrind).
        now = time.time()
        where, params = "state IN ('pending', 'failed') AND waiting_on = 0 AND run_at <= ?", [now]
        queues = getattr(worker, "queues", None) or []
        if queues:
            where += f" AND queue IN ({','.join('?' * len(queues))})"
            params += queues
        blocked = [r[0] for r in conn.execute(BLOCKED_QUEUES).fetchall()]     # none, unless paused or limited
        if blocked:
            where += f" AND queue NOT IN ({','.join('?' * len(blocked))})"
            params += blocked
        # INDEXED BY: left to itself the planner picks jobs_state and sorts every runnable job.
        found = conn.execute(f"SELECT seq FROM jobs INDEXED BY jobs_claim WHERE {where} "
                             f"ORDER BY priority DESC, run_at, seq LIMIT 1", params).fetchone()
        if found is None:
            return None
        conn.execute(
            "UPDATE jobs SET state = 'processing', attempts = attempts + 1, tries = tries + 1, "
            "lease_owner = ?, lease_host = ?, lease_pid = ?, lease_pid_start = ?, lease_pgid = NULL, "
            "lease_expires = ?, lease_token = lease_token + 1, run_id = lower(hex(randomblob(16))), "
            "started_at = ?, updated_at = ? WHERE seq = ?",
            (worker.id, worker.host, worker.pid, worker.pid_start, now + lease_timeout, now, now, found[0]))
        job = self._job(conn.execute(CLAIMED_ROW, found).fetchone())
        if len(self._claimed) >= 64:        # claims never finished through this handle (leases lost)
            self._claimed.clear()
        self._claimed[job.id] = job         # its finish builds the finished job from it (finished_job)
        return job

    def claim(self, worker: WorkerInfo, lease_timeout: float) -> Optional[Job]:
        return self._write(self._claim, worker, lease_timeout)

    def renew(self, job_id: str, token: int, lease_timeout: float, pgid=None) -> bool:
        def extend(conn):
            return conn.execute(
                "UPDATE jobs SET lease_expires = ?, lease_pgid = COALESCE(?, lease_pgid) "
                "WHERE id = ? AND lease_token = ? AND state = 'processing'",
                (time.time() + lease_timeout, pgid, job_id, token)).rowcount == 1
        return self._write(extend)

    def finish(self, job_id, token, attempt: Attempt, to: Transition, claim_next=None, lease_timeout=30.0):
        def record(conn):
            now, job, awaited = time.time(), None, False
            claimed = self._claimed.get(job_id)
            if conn.execute(
                    "UPDATE jobs SET state = ?, run_at = ?, last_error = ?, exit_code = ?, tries = tries - ?, "
                    "updated_at = ?, lease_owner = NULL, lease_host = NULL, lease_pid = NULL, lease_pid_start = NULL, "
                    "lease_pgid = NULL, lease_expires = NULL, run_id = NULL "
                    "WHERE id = ? AND lease_token = ? AND state = 'processing'",
                    (to.state, to.run_at, to.error, attempt.exit_code, 0 if to.count_try else 1, now,
                     job_id, token)).rowcount == 1:
                if claimed is not None and claimed.lease is not None and claimed.lease.token == token:
                    # our own claim: of its row only these can have changed since (finished_job)
                    waiting_on, cancel, awaited = conn.execute(FINISHED_FLAGS, (job_id,)).fetchone()
                    job = finished_job(claimed, to.state, to.run_at, to.error, attempt.exit_code,
                                       claimed.tries - (0 if to.count_try else 1), now, waiting_on, cancel)
                else:
                    row = conn.execute(FINISHED_ROW, (job_id,)).fetchone()
                    job, awaited = self._job(row[:N_JOB_COLUMNS]), row[N_JOB_COLUMNS]
            released = 0
            if job is not None:
                self._record_attempt(conn, attempt)
                if awaited:                     # only jobs that others wait for: most have none
                    released = self._settle_dependents(conn, job.id, job.state)
            following = self._claim(conn, claim_next, lease_timeout) if claim_next else None
            return job, following, released
        job, following, released = self._write(record)
        self._claimed.pop(job_id, None)
        if released:
            self.notify()               # dependents became runnable: wake idle workers
        return job, following

    def _settle_dependents(self, conn, job_id: str, state: str) -> int:
        """A completed job releases its dependents; a dead or cancelled one kills them, transitively."""
        if state == COMPLETED:
            released = conn.execute("UPDATE jobs SET waiting_on = waiting_on - 1 WHERE id IN "
                                    "(SELECT job_id FROM job_deps WHERE dep_id = ? AND satisfied = 0)",
                                    (job_id,)).rowcount
            conn.execute("UPDATE job_deps SET satisfied = 1 WHERE dep_id = ? AND satisfied = 0", (job_id,))
            return released
        if state in (DEAD, CANCELLED):
            todo = [(job_id, state)]
            while todo:
                dep, how = todo.pop()
                rows = conn.execute(
                    "UPDATE jobs SET state = 'dead', last_error = ?, updated_at = ? WHERE state = 'pending' AND id IN "
                    "(SELECT job_id FROM job_deps WHERE dep_id = ? AND satisfied = 0) RETURNING id",
                    (f"dependency {dep} ended {how}", time.time(), dep)).fetchall()
                todo.extend((r[0], DEAD) for r in rows)
        return 0

    def _record_attempt(self, conn, a: Attempt) -> None:
        conn.execute(f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (a.job_id, a.attempt, a.outcome, a.started_at, a.finished_at, a.exit_code, a.signal,
                      a.error, a.stdout, a.stderr, a.worker, a.host, a.pid))
        slot, index, minute, _, failed = series_row(a)
        tally = (failed, a.duration, a.started_at, a.finished_at)
        conn.execute(TALLY_UPSERT, (slot, index, minute, *tally, index, *tally))

    def leases(self) -> list[Job]:
        rows = self._read(f"SELECT {JOB_COLUMNS}, lease_expires < ? FROM jobs WHERE state = 'processing'",
                          (time.time(),))
        return [self._job(r) for r in rows]

    def next_run_at(self) -> Optional[float]:
        rows = self._read("SELECT MIN(run_at) FROM jobs WHERE state IN ('pending', 'failed') AND waiting_on = 0")
        return rows[0][0] if rows else None

    def has_outstanding(self, queues=None) -> bool:
        """Work a --burst pool must wait for: a running job, a retry, or a job runnable now.

        Jobs scheduled for later, held by a paused queue or waiting on such jobs do not count.
        """
        only = f"AND queue IN ({','.join('?' * len(queues))}) " if queues else ""
        live = f"AND queue NOT IN (SELECT name FROM queues WHERE paused = 1) {only}"
        rows = self._read(
            f"SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'processing' {only}) "
            f"OR EXISTS (SELECT 1 FROM jobs WHERE state = 'failed' {live}) "
            f"OR EXISTS (SELECT 1 FROM jobs WHERE state = 'pending' AND waiting_on = 0 AND run_at <= ? {live})",
            (*(queues or ()), *(queues or ()), time.time(), *(queues or ())))
        return bool(rows[0][0])

    # --- control: cancel, queues, schedules, purge ----------------------------------------------------

    def cancel_job(self, job_id: str) -> str:
        """pending or failed -> cancelled at once; processing -> asks its worker to stop it."""
        def cancel(conn):
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row[0] == PROCESSING:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                return "cancelling"
            if row[0] not in ("pending", "failed"):
                raise Conflict(f"job {job_id!r} is {row[0]}: nothing to cancel")
            conn.execute("UPDATE jobs SET state = 'cancelled', last_error = 'cancelled by user', updated_at = ? "
                         "WHERE id = ?", (time.time(), job_id))
            self._settle_dependents(conn, job_id, CANCELLED)
            return CANCELLED
        return self._write(cancel)

    def cancel_requested(self, job_id: str, token: int) -> bool:
        rows = self._read("SELECT cancel_requested FROM jobs WHERE id = ? AND lease_token = ?", (job_id, token))
        return bool(rows and rows[0][0])

    def set_queue(self, name: str, concurrency=..., paused=None) -> dict:
        def change(conn):
            conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (name,))
            if concurrency is not ...:
                conn.execute("UPDATE queues SET concurrency = ? WHERE name = ?", (concurrency, name))
            if paused is not None:
                conn.execute("UPDATE queues SET paused = ? WHERE name = ?", (int(paused), name))
        self._write(change)
        return next(q for q in self.queues() if q["name"] == name)

    def queues(self) -> list[dict]:
        rows = self._read(
            "SELECT name, MAX(concurrency), MAX(paused), SUM(state = 'pending'), SUM(state = 'processing') FROM ("
            "SELECT name, concurrency, paused, NULL AS state FROM queues UNION ALL "
            "SELECT queue, NULL, 0, state FROM jobs WHERE state IN ('pending', 'processing')) GROUP BY name "
            "ORDER BY name")
        return [{"name": n, "concurrency": c, "paused": bool(p), "pending": pe or 0, "processing": pr or 0}
                for n, c, p, pe, pr in rows]

    def add_schedule(self, name: str, cron: str, spec: dict, missed: str, last_tick: float,
                     replace: bool = False) -> None:
        def add(conn):
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            try:
                conn.execute(f"{verb} INTO schedules VALUES (?, ?, ?, ?, ?, ?)",
                             (name, cron, json.dumps(spec), missed, last_tick, time.time()))
            except sqlite3.IntegrityError:
                raise Conflict(f"a schedule named {name!r} already exists") from None
        self._write(add)

    def remove_schedule(self, name: str) -> bool:
        return self._write(lambda c: c.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 1)

    def schedules(self) -> list[dict]:
        rows = self._read("SELECT name, cron, spec, missed, last_tick, created_at FROM schedules ORDER BY name")
        return [schedule_from_row(row) for row in rows]

    def fire_schedule(self, name: str, last_tick: float, tick: float, jobs: list[Job]) -> bool:
        """Advance a schedule from ``last_tick`` to ``tick`` and enqueue ``jobs``, once across all pools."""
        def fire(conn):
            moved = conn.execute("UPDATE schedules SET last_tick = ? WHERE name = ? AND last_tick = ?",
                                 (tick, name, last_tick)).rowcount
            if moved:
                self._store_jobs(conn, jobs)
            return bool(moved)
        fired = self._write_jobs(fire, jobs)
        if fired and jobs:
            self.notify()
        return fired

    def purge(self, states, before: float) -> int:
        def purge(conn):
            marks = ",".join("?" * len(states))
            ids = [r[0] for r in conn.execute(f"DELETE FROM jobs WHERE state IN ({marks}) AND updated_at < ? "
                                              f"RETURNING id", (*states, before)).fetchall()]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM attempts WHERE job_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM job_deps WHERE job_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM output_chunks WHERE job_id IN ({marks})", chunk)
                conn.execute(f"DELETE FROM job_labels WHERE job_id IN ({marks})", chunk)
            return len(ids)
        return self._write(purge)

    # --- live output -----------------------------------------------------------------------------

    def append_output(self, job_id: str, attempt: int, chunks: list, keep: dict) -> None:
        def append(conn):
            now = time.time()
            conn.executemany("INSERT INTO output_chunks (job_id, attempt, stream, offset, data, written_at) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             [(job_id, attempt, stream, offset, data, now) for stream, offset, data in chunks])
            for stream, (head_end, window) in keep.items():
                if window > head_end:     # the middle of a long output is not kept (the cap)
                    conn.execute("DELETE FROM output_chunks WHERE job_id = ? AND attempt = ? AND stream = ? "
                                 "AND offset >= ? AND offset + length(data) <= ?",
                                 (job_id, attempt, stream, head_end, window))
        self._write(append)

    def output_chunks(self, job_id: str, attempt: int, after: int = 0) -> list:
        return self._read("SELECT seq, stream, offset, data FROM output_chunks WHERE job_id = ? AND attempt = ? "
                          "AND seq > ? ORDER BY seq", (job_id, attempt, after))

    EXPIRED_OUTPUT = ("FROM output_chunks WHERE written_at < ? AND NOT EXISTS (SELECT 1 FROM jobs j WHERE "
                      "j.id = output_chunks.job_id AND j.state = 'processing' AND j.attempts = output_chunks.attempt)")

    def expire_output(self, older_than: float) -> int:
        before = time.time() - older_than
        if not self._read(f"SELECT 1 {self.EXPIRED_OUTPUT} LIMIT 1", (before,)):
            return 0                      # a read: most calls find nothing and take no write lock
        return self._write(lambda c: c.execute(f"DELETE {self.EXPIRED_OUTPUT}", (before,)).rowcount)

    def output_listener(self):
        return None                       # followers poll output_chunks (one indexed read)

    # --- settings --------------------------------------------------------------------------------

    def get_settings(self) -> dict:
        return settings_from_rows(self._read("SELECT key, value FROM settings"))

    def set_setting(self, key, value) -> None:
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, json.dumps(value))))

    def unset_setting(self, key) -> bool:
        return self._write(lambda c: c.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount == 1)

    # --- workers -----------------------------------------------------------------------------------

    def register_worker(self, info: WorkerInfo) -> None:
        now = time.time()
        self._write(lambda c: c.execute(
            "INSERT OR REPLACE INTO workers (id, kind, host, pid, pid_start, pool_id, started_at, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (info.id, info.kind, info.host, info.pid, info.pid_start, info.pool_id, now, now)))

    def heartbeat_worker(self, worker_id: str) -> bool:
        def beat(conn):
            rows = conn.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ? RETURNING stop_requested",
                                (time.time(), worker_id)).fetchall()
            return not rows or not rows[0][0]
        return self._write(beat)

    def remove_worker(self, worker_id: str) -> None:
        self._write(lambda c: c.execute("DELETE FROM workers WHERE id = ? OR pool_id = ?", (worker_id, worker_id)))

    def workers(self) -> list[dict]:
        rows = self._read(
            "SELECT w.id, w.kind, w.host, w.pid, w.pid_start, w.pool_id, w.started_at, w.heartbeat_at, "
            "w.stop_requested, (SELECT j.id FROM jobs j WHERE j.state = 'processing' AND j.lease_owner = w.id "
            "LIMIT 1) FROM workers w ORDER BY w.started_at")
        keys = ("id", "kind", "host", "pid", "pid_start", "pool_id", "started_at", "heartbeat_at",
                "stop_requested", "job_id")
        return [dict(zip(keys, r)) for r in rows]

    def request_stop(self, host=None) -> int:
        def ask(conn):
            sql = "UPDATE workers SET stop_requested = 1 WHERE kind = 'pool'"
            return conn.execute(sql + (" AND host = ?" if host else ""), (host,) if host else ()).rowcount
        return self._write(ask)

    # --- statistics ----------------------------------------------------------------------------------

    def stats(self) -> dict:
        total, failed, total_duration, first, last = self._read(TOTALS)[0]
        hist = self._read(HISTOGRAM)
        recent = self._read("SELECT COUNT(*) FROM attempts WHERE finished_at >= ?", (time.time() - 60,))[0][0]
        counts = self.counts()
        return stats_summary(total, failed, total_duration, first, last, hist, recent, counts)

    # --- the dashboard and /metrics: reads that stay cheap at any number of jobs -----------------------

    def queue_counts(self) -> dict:
        rows = self._read("SELECT queue, state, n FROM queue_counts WHERE n <> 0 ORDER BY queue, state")
        out: dict = {}
        for queue, state, n in rows:
            out.setdefault(queue, {})[state] = n
        return out

    def oldest_pending(self) -> dict:
        """Seconds since each queue's earliest-enqueued pending job was enqueued: an index seek per queue."""
        queues = [r[0] for r in self._read("SELECT queue FROM queue_counts WHERE state = 'pending' AND n > 0")]
        out, now = {}, time.time()
        for queue in queues:
            rows = self._read("SELECT created_at FROM jobs INDEXED BY jobs_queue_state WHERE queue = ? "
                              "AND state = 'pending' ORDER BY seq LIMIT 1", (queue,))
            if rows:
                out[queue] = max(0.0, now - rows[0][0])
        return out

    def queue_settings(self) -> list[dict]:
        """Queues that have a limit or a pause set (from their own table, not by counting jobs)."""
        rows = self._read("SELECT name, concurrency, paused FROM queues ORDER BY name")
        return [{"name": n, "concurrency": c, "paused": bool(p)} for n, c, p in rows]

    def run_totals(self) -> dict:
        total, failed, total_duration, _, _ = self._read(TOTALS)[0]
        hist = self._read(HISTOGRAM)
        return {"runs": total, "failed": failed, "duration_sum": total_duration, "histogram": hist}

    def series(self, window: float, step: int) -> list[dict]:
        now = time.time()
        rows = self._read("SELECT minute * 60 / ?, bucket, SUM(n), SUM(failed) FROM run_series WHERE slot >= 0 "
                          "AND minute >= ? GROUP BY 1, 2", (step, int((now - window) // 60)))
        return series_points(rows, now, window, step)

    def page_jobs(self, state=None, queue=None, text=None, before=None, limit=50) -> dict:
        return keyset_page(self._read, "jobs", "?", lambda column: f"instr({column}, ?)", state, queue, text,
                           before, limit)

    # --- wake-ups --------------------------------------------------------------------------------------

    def notify(self) -> None:
        try:
            names = os.listdir(self.wake_dir)
        except OSError:
            return
        if names and self._notify_sock is None:
            import socket      # here, not at the top: a command with no idle worker to wake never needs it

            self._notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._notify_sock.setblocking(False)
        for name in names:
            path = os.path.join(self.wake_dir, name)
            try:
                self._notify_sock.sendto(b"!", path)
            except (ConnectionRefusedError, FileNotFoundError):
                try:
                    os.unlink(path)      # its worker is gone
                except OSError:
                    pass
            except OSError:
                pass                      # its buffer is full: it is awake already

    def listener(self, name: str):
        try:
            os.mkdir(self.wake_dir, 0o700)
        except FileExistsError:
            if not os.path.isdir(self.wake_dir):
                return None
        except OSError:
            return None
        path = os.path.join(self.wake_dir, f"{os.getpid()}-{name}")
        if len(path.encode()) > 100:
            return None                   # too long for a socket address: rely on the poll
        return WakeSocket(path)


class WakeSocket:
    def __init__(self, path: str):
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        try:
            while self.sock.recv(64):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
