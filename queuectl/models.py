"""Jobs, attempts and states: the nouns the core and every plugin share."""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Optional

PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
DEAD = "dead"
CANCELLED = "cancelled"
STATES = (PENDING, PROCESSING, COMPLETED, FAILED, DEAD, CANCELLED)
#: States a job never leaves by itself.
FINISHED_STATES = (COMPLETED, DEAD, CANCELLED)
RUNNABLE_STATES = (PENDING, FAILED)
#: States in which a job still has work ahead of it (a --burst pool waits for these).
OUTSTANDING_STATES = (PENDING, PROCESSING, FAILED)

# How an attempt ended.
SUCCEEDED = "succeeded"          # exit code 0
EXITED = "failed"                # non-zero exit, death by signal, command not found
TIMED_OUT = "timed_out"          # killed after the job's timeout
WORKER_LOST = "worker_lost"      # its worker died; found by pid or by an expired lease
INTERRUPTED = "interrupted"      # stopped by a second shutdown signal; not the job's fault
START_ERROR = "start_error"      # the executor could not start it (missing cwd, unknown executor)
STOPPED = "cancelled"            # stopped by `queuectl cancel`
OUTCOMES = (SUCCEEDED, EXITED, TIMED_OUT, WORKER_LOST, INTERRUPTED, START_ERROR, STOPPED)

#: Fields a job may be given on the way in (plugins may declare more).
INPUT_FIELDS = ("id", "command", "max_retries", "timeout", "cwd", "env", "executor", "priority", "queue",
                "delay", "run_at", "after", "unique_key",
                "labels", "argv")
#: Fields only queuectl sets.
PROTECTED_FIELDS = ("state", "attempts", "created_at", "updated_at")
QUEUE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def now() -> float:
    return time.time()


def iso(ts: Optional[float]) -> Optional[str]:
    """ISO-8601 UTC with millisecond precision, ending in Z."""
    if ts is None:
        return None
    from datetime import datetime, timezone     # only when rendering: most commands never need it

    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclasses.dataclass
class Lease:
    """Who holds a processing job, until when, and the fencing token that makes late writes harmless."""

    owner: str
    host: str
    pid: int
    pid_start: Optional[int]
    token: int
    run_id: str
    expires: float
    pgid: Optional[int] = None
    started_at: Optional[float] = None
    expired: bool = False


@dataclasses.dataclass
class Job:
    """A job: its command, its state, its retry budget and, while it runs, its lease."""

    id: str
    command: str
    state: str = PENDING
    attempts: int = 0
    max_retries: int = 3
    created_at: float = 0.0
    updated_at: float = 0.0
    run_at: float = 0.0
    priority: int = 0
    queue: str = "default"
    executor: str = "shell"
    cwd: Optional[str] = None
    env: dict = dataclasses.field(default_factory=dict)
    timeout: Optional[float] = None
    source: Optional[str] = None
    fields: dict = dataclasses.field(default_factory=dict)   # fields declared by plugins
    tries: int = 0            # attempts counted against max_retries since enqueue or the last dlq retry
    unique_key: Optional[str] = None
    after: list = dataclasses.field(default_factory=list)     # ids of jobs this one waits for
    waiting_on: int = 0       # how many of them have not completed yet
    cancel_requested: bool = False
    labels: dict = dataclasses.field(default_factory=dict)   # KEY=VALUE tags, shown in `list`, filterable
    argv: Optional[list] = None   # run without a shell (command is then its shell-quoted form, for display)
    edits: list = dataclasses.field(default_factory=list)    # `queuectl edit`: when, and the values before
    last_error: Optional[str] = None
    exit_code: Optional[int] = None
    lease: Optional[Lease] = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id, "command": self.command, "state": self.state,
            "attempts": self.attempts, "max_retries": self.max_retries,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "run_at": iso(self.run_at), "priority": self.priority, "queue": self.queue,
            "executor": self.executor, "cwd": self.cwd, "env": dict(self.env),
            "timeout": self.timeout, "source": self.source, "unique_key": self.unique_key,
            "after": list(self.after), "waiting_on": self.waiting_on,
            "retries_left": max(0, self.max_retries + 1 - self.tries) if self.state != "completed" else 0,
            "last_error": self.last_error, "exit_code": self.exit_code,
            "worker": None,
            "labels": dict(self.labels), "argv": list(self.argv) if self.argv is not None else None,
            "edits": [dict(e) for e in self.edits],
        }
        if self.lease is not None:
            out["worker"] = {"id": self.lease.owner, "host": self.lease.host, "pid": self.lease.pid,
                             "pgid": self.lease.pgid, "lease_expires_at": iso(self.lease.expires),
                             "started_at": iso(self.lease.started_at)}
        out.update(self.fields)
        return out


@dataclasses.dataclass
class Attempt:
    """One run of a job: what it printed, how it ended, how long it took."""

    job_id: str
    attempt: int
    outcome: str
    started_at: float
    finished_at: float
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    error: Optional[str] = None
    stdout: bytes = b""
    stderr: bytes = b""
    worker: Optional[str] = None
    host: Optional[str] = None
    pid: Optional[int] = None

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "attempt": self.attempt, "outcome": self.outcome,
            "exit_code": self.exit_code, "signal": self.signal, "error": self.error,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "duration": round(self.duration, 6),
            "created_at": iso(self.started_at), "finished_at": iso(self.finished_at),
            "worker": self.worker, "host": self.host, "pid": self.pid,
        }


@dataclasses.dataclass
class ExecResult:
    """What an executor reports when a run ends."""

    outcome: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    error: Optional[str] = None
    stdout: bytes = b""
    stderr: bytes = b""


@dataclasses.dataclass
class RetryDecision:
    """The answer of the retry policy hook: retry after `delay` seconds, or give up."""

    retry: bool
    delay: float = 0.0
    reason: Optional[str] = None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value) -> float:
    """Seconds from 90, "90", "90s", "10m", "2h", "1d", "1h30m"; ValueError with a message otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text)
        if not text or re.sub(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", "", text).strip() or not parts:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90, 30s, 10m, 2h, 1d, 1h30m)")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


def parse_time(value) -> float:
    """Epoch seconds from an ISO-8601 time with a zone (2026-12-01T02:00:00Z or +01:00)."""
    from datetime import datetime     # only when a time is given: most commands never need it

    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {value!r} (use e.g. 2026-12-01T02:00:00Z)") from None
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no zone: add Z for UTC or an offset like +01:00")
    return parsed.timestamp()
