"""The storage contract: the verbs every backend implements.

A backend is registered by a plugin through ``queuectl_register_storage``; the core
speaks only these verbs. ``tests/test_store_contract.py`` runs the same tests against
every registered backend.
"""
from __future__ import annotations

from typing import Optional, Protocol

from .models import Attempt, Job, record


@record
class WorkerInfo:
    """A worker or pool process as the store knows it."""

    id: str
    host: str
    pid: int
    pid_start: Optional[int]
    kind: str = "worker"          # "worker" or "pool"
    pool_id: Optional[str] = None
    queues: Optional[list] = None   # only claim jobs of these queues (None: every queue)

    def __init__(self, id: str, host: str, pid: int, pid_start: Optional[int], kind: str = "worker",
                 pool_id: Optional[str] = None, queues: Optional[list] = None) -> None:
        self.id = id
        self.host = host
        self.pid = pid
        self.pid_start = pid_start
        self.kind = kind
        self.pool_id = pool_id
        self.queues = queues


@record
class Transition:
    """Where a job goes after an attempt; applied only while the caller still holds the lease."""

    state: str
    run_at: float
    error: Optional[str] = None
    count_try: bool = True        # False: the attempt does not use up a retry (interrupted by shutdown)

    def __init__(self, state: str, run_at: float, error: Optional[str] = None, count_try: bool = True) -> None:
        self.state = state
        self.run_at = run_at
        self.error = error
        self.count_try = count_try


def blocked_message(job_id: str, dependency: str, state: str) -> str:
    """Why a job cannot be retried: one of its dependencies can no longer complete."""
    if state == "purged":
        return f"job {job_id!r} waits for {dependency!r}, which was purged before it completed"
    return f"job {job_id!r} waits for {dependency!r}, which is {state}: retry that first"


class Listener(Protocol):
    def fileno(self) -> int: ...
    def drain(self) -> None: ...
    def close(self) -> None: ...


class Store(Protocol):
    """Verbs of a storage backend. Every write is atomic; every lease write is fenced."""

    url: str

    def init(self) -> None:
        """Create or migrate the schema; idempotent. Refuse a schema newer than this code."""

    def close(self) -> None: ...

    def describe(self) -> dict:
        """Backend name, location and schema version, for `queuectl status`."""

    # jobs
    def add_jobs(self, jobs: list[Job], receipt: Optional[dict] = None) -> list[str]:
        """Store all of ``jobs`` or none; raise Conflict naming a duplicate id; return their ids.

        A job whose ``unique_key`` is held by a pending, failed or processing job is not stored:
        the holder's id is returned in its place. Each id in ``after`` must exist (NotFound);
        a job waits until they complete, and is dead at once if one is dead or cancelled.

        ``receipt`` ({"key", "name", "sha256"}) is recorded in the same transaction, so a
        source (the spool folder) can tell after a crash whether a delivery was stored;
        a key already recorded raises Conflict and stores nothing.
        """

    def add_deliveries(self, deliveries: list[tuple[list[Job], Optional[dict]]]) -> list[list[str]]:
        """Several add_jobs calls, each (jobs, receipt), in one transaction: all are stored or none
        (a Conflict or NotFound in any stores nothing); returns the ids of each, as add_jobs would.
        Optional: the spool folder makes one add_jobs call per file with a store that lacks it.
        """

    def get_receipt(self, key: str) -> Optional[dict]:
        """The receipt stored under ``key`` (with the ids of its jobs), or None."""

    def get_job(self, job_id: str) -> Optional[Job]: ...

    def list_jobs(self, state: Optional[str] = None, limit: Optional[int] = None, offset: int = 0,
                  newest: bool = False, **filters) -> list[Job]:
        """Jobs in enqueue order, optionally of one state.

        ``newest``: the last ``limit`` jobs (still returned in enqueue order). Filters, given only
        when set: ``queue`` (a name), ``labels`` ({key: value, or None for "has the key"}, all must
        match), ``grep`` (a case-insensitive substring of the command), ``since`` (enqueued at or
        after, epoch seconds).
        """

    def find_ids(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` job ids that start with ``prefix``, in id order."""

    def edit_job(self, job_id: str, from_states: tuple, changes: dict, edit: dict,
                 retry_from: Optional[tuple] = None) -> Job:
        """Change the fields in ``changes`` (command, argv, env, cwd, timeout, labels) of a job in one
        of ``from_states`` and append ``edit`` to its history; with ``retry_from``, also retry it as
        retry_job does, in the same transaction. Conflict in another state.
        """

    def counts(self) -> dict[str, int]:
        """Jobs per state, kept up to date by the store instead of counted on demand."""

    def attempts(self, job_id: str, attempt: Optional[int] = None) -> list[Attempt]: ...

    def retry_job(self, job_id: str, from_states: tuple[str, ...]) -> Job:
        """Move a job in one of ``from_states`` back to pending with a fresh retry budget.

        Conflict when its unique key is now held by another job, or it waits for a dead job.
        """

    # claiming and leases
    def claim(self, worker: WorkerInfo, lease_timeout: float) -> Optional[Job]:
        """Atomically take the next runnable job and lease it to ``worker``.

        Runnable: pending or failed, ``run_at`` reached, every dependency completed, its queue
        neither paused nor at its concurrency limit, and one of ``worker.queues`` if given.
        Order: priority (high first), then run_at, then enqueue order.
        """

    def renew(self, job_id: str, token: int, lease_timeout: float, pgid: Optional[int] = None) -> bool:
        """Extend a lease; False when the lease is no longer held (fenced)."""

    def finish(self, job_id: str, token: int, attempt: Attempt, to: Transition,
               claim_next: Optional[WorkerInfo] = None, lease_timeout: float = 30.0
               ) -> tuple[Optional[Job], Optional[Job]]:
        """Record an attempt and move the job, in one transaction, if ``token`` still holds the lease.

        Returns (the job after the move, or None when the write was refused as stale; the next
        claimed job when ``claim_next`` is given).
        """

    def leases(self) -> list[Job]:
        """Jobs in processing, each with its lease; ``lease.expired`` by the store's clock."""

    def next_run_at(self) -> Optional[float]:
        """When the earliest waiting job becomes runnable."""

    def has_outstanding(self, queues: Optional[list] = None) -> bool:
        """True while a job is processing, failed (waiting for a retry) or pending and runnable now.

        Jobs scheduled for later or in a paused queue do not count; ``queues`` narrows to those queues.
        """

    # control
    def cancel_job(self, job_id: str) -> str:
        """Cancel a pending or failed job ("cancelled"), or ask a processing job's worker ("cancelling")."""

    def cancel_requested(self, job_id: str, token: int) -> bool:
        """True when a cancel was requested for the job while ``token`` holds its lease."""

    def set_queue(self, name: str, concurrency=..., paused: Optional[bool] = None) -> dict:
        """Set a queue's concurrency limit (None: unlimited) and/or pause it; returns its row."""

    def queues(self) -> list[dict]:
        """Every known queue: name, concurrency, paused, pending, processing."""

    def add_schedule(self, name: str, cron: str, spec: dict, missed: str, last_tick: float,
                     replace: bool = False) -> None:
        """Store a recurring job; ``last_tick`` is the tick it counts as already fired."""
    def remove_schedule(self, name: str) -> bool: ...
    def schedules(self) -> list[dict]: ...

    def fire_schedule(self, name: str, last_tick: float, tick: float, jobs: list[Job]) -> bool:
        """Compare-and-set a schedule's last tick and enqueue ``jobs`` in one transaction.

        False (nothing stored) when another pool fired this tick first.
        """

    def purge(self, states: tuple[str, ...], before: float) -> int:
        """Delete jobs in ``states`` last updated before ``before``, with their attempts."""

    # settings
    def get_settings(self) -> dict: ...
    def set_setting(self, key: str, value) -> None: ...
    def unset_setting(self, key: str) -> bool: ...

    # workers
    def register_worker(self, info: WorkerInfo) -> None: ...
    def heartbeat_worker(self, worker_id: str) -> bool:
        """Refresh a worker's row; False when a stop was requested for it."""
    def remove_worker(self, worker_id: str) -> None: ...
    def workers(self) -> list[dict]: ...
    def request_stop(self, host: Optional[str] = None) -> int:
        """Ask every registered pool (on ``host``, or everywhere) to stop; returns how many."""

    # live output (optional: a backend without these shows output when the attempt ends)
    def append_output(self, job_id: str, attempt: int, chunks: list, keep: dict) -> None:
        """Store chunks ``[(stream, offset, bytes)]`` of a running attempt; for each ``keep[stream] =
        (head_end, window)`` delete that stream's chunks lying wholly between the two offsets (the cap)."""

    def output_chunks(self, job_id: str, attempt: int, after: int = 0) -> list:
        """Chunks ``(seq, stream, offset, bytes)`` of an attempt with ``seq > after``, in the order stored."""

    def expire_output(self, older_than: float) -> int:
        """Delete chunks older than ``older_than`` seconds of attempts no longer running; return how many."""

    def output_listener(self) -> Optional[Listener]:
        """A handle that becomes ready when output is stored; None: followers poll ``output_chunks``."""

    def recent_jobs(self, state: str, limit: int) -> list[Job]:
        """The jobs of ``state`` changed last, newest first (optional; for `top`)."""

    def attempt_summaries(self, job_id: str, after: int, before: int, limit: int) -> list:
        """The newest ``limit`` attempts numbered after ``after`` and before ``before``, newest first, without
        their output: ``(Attempt with empty stdout/stderr, stdout bytes, stderr bytes)`` (optional: without
        it the Queue reads the attempts whole; for the dashboard's job page)."""

    # statistics
    def stats(self) -> dict:
        """total_runs, failed_runs, avg_duration, p50/p95 duration, dead_jobs, throughput."""

    # the dashboard and /metrics: reads that never scan the jobs or the attempts
    def queue_counts(self) -> dict:
        """Jobs per queue and state, {queue: {state: n}} (zeros left out), kept current like counts()."""

    def queue_settings(self) -> list[dict]:
        """Queues with a limit or pause set: name, concurrency, paused (from their own rows)."""

    def oldest_pending(self) -> dict:
        """Per queue with pending jobs, seconds since the earliest-enqueued one was enqueued (index seeks)."""

    def run_totals(self) -> dict:
        """runs, failed, duration_sum and histogram ((bucket, n) rows of the duration histogram)."""

    def series(self, window: float, step: int) -> list[dict]:
        """Attempts over the last ``window`` seconds (at most a day), binned by ``step`` (whole minutes),
        oldest first: t, runs, failed, p50, p95, p99; read from a per-minute rollup kept at finish()."""

    def page_jobs(self, state: Optional[str] = None, queue: Optional[str] = None, text: Optional[str] = None,
                  before: Optional[int] = None, limit: int = 50) -> dict:
        """Newest jobs first after the cursor ``before``: {"jobs", "next"}. ``text`` matches a substring
        of the command or a prefix of the id. A page costs the same at any number of jobs."""

    # wake-ups
    def notify(self) -> None:
        """Wake idle workers after new work was committed."""

    def listener(self, name: str) -> Optional[Listener]:
        """A readable handle that becomes ready on notify(); None when the backend cannot."""
