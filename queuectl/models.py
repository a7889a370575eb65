"""Jobs, attempts and states: the nouns the core and every plugin share."""
from __future__ import annotations

import math
import reprlib
import threading
import time
from typing import Any, Optional

from ._lazy import LazyPattern      # compiled at first use: most commands match none of them

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
QUEUE_PATTERN = LazyPattern(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LABEL_PATTERN = LazyPattern(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


def check_label_name(key) -> str:
    """``key`` if it is a label name (on a job and in ``list --label``), else ValueError."""
    if not isinstance(key, str) or not LABEL_PATTERN.match(key):
        raise ValueError(f"label name {key!r} is not valid: use 1-64 letters, digits and ._/- "
                         f"starting with a letter or digit")
    return key

# --- ranges: every number a job, an option or a setting holds, defined once -----------------
# The validator, the settings and the click option types all check against these, so SQLite and
# PostgreSQL (64-bit integers, finite doubles) always receive values they can store and render.

INT64_MAX = 2 ** 63 - 1
MAX_SECONDS = 10 * 365 * 86400          # the longest delay, timeout, age or backoff: ten years
MAX_INTERVAL = 3600.0                   # the longest poll or check interval: one hour
MAX_WAIT = 86400.0                      # the longest lease, kill grace or lock wait: one day
MAX_TIME = 253402300799.0               # 9999-12-31T23:59:59Z, the last second every platform renders
#: Linux's limit for one exec argument (MAX_ARG_STRLEN), its terminating NUL included: a command,
#: env value or cwd must be shorter.
MAX_ARG_BYTES = 131072


# --- records ---------------------------------------------------------------------------------
# The classes below are dataclasses (fields(), replace() and asdict() work on them, as plugins
# may rely on), but their methods are written out here rather than generated: @dataclass compiles
# each generated method when the module is imported, which was most of the import cost of this
# module and of store.py on every command. tests/test_models.py checks the methods against the
# ones @dataclass would generate.
#
# @dataclass itself runs on a record when its fields are first asked for (dataclasses.fields,
# replace, asdict, is_dataclass; a repr or ==), not at import: processing the records (two
# pattern matches and a Field per field) and importing dataclasses were about 8M instructions
# of every command, and most commands never look at a field list.


class _Factory:
    """The default of a field made fresh for each instance (``dataclasses.field(default_factory=...)``)."""

    def __repr__(self) -> str:
        return "<factory>"


FRESH: Any = _Factory()


class factory:
    """``dataclasses.field(default_factory=make)`` in a record's body; made into that when @dataclass runs."""

    def __init__(self, make) -> None:
        self.make = make


class _Deferred:
    """A record's ``__dataclass_fields__`` or ``__dataclass_params__`` until @dataclass has run on it:
    asking for either runs it, which puts the real attributes in place of these."""

    name = ""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __get__(self, obj, owner=None):
        _run_dataclass(self.cls)
        return getattr(self.cls if owner is None else owner, self.name)


class _DeferredFields(_Deferred):
    name = "__dataclass_fields__"


class _DeferredParams(_Deferred):
    name = "__dataclass_params__"


_DATACLASS_LOCK = threading.RLock()


def _run_dataclass(cls: type) -> None:
    with _DATACLASS_LOCK:
        if not isinstance(cls.__dict__.get("__dataclass_fields__"), _Deferred):
            return                      # another thread ran it meanwhile
        import dataclasses

        del cls.__dataclass_fields__, cls.__dataclass_params__
        for name, value in list(cls.__dict__.items()):
            if isinstance(value, factory):
                setattr(cls, name, dataclasses.field(default_factory=value.make))
        dataclasses.dataclass(cls, init=False, repr=False, eq=False)


def deferred_dataclass(cls):
    """``@dataclass(init=False, repr=False, eq=False)``, run when the fields are first asked for. The
    class writes its own ``__init__`` (and its repr and ==, if it has them)."""
    cls.__dataclass_fields__ = _DeferredFields(cls)
    cls.__dataclass_params__ = _DeferredParams(cls)
    if "__match_args__" not in cls.__dict__:          # as @dataclass sets it: the fields, in order
        cls.__match_args__ = tuple(cls.__dict__.get("__annotations__", {}))
    return cls


@reprlib.recursive_repr()
def _record_repr(self) -> str:
    names = _record_names(type(self))[0]
    return f"{type(self).__qualname__}({', '.join(f'{name}={getattr(self, name)!r}' for name in names)})"


def _record_eq(self, other):
    if other.__class__ is self.__class__:
        names = _record_names(type(self))[1]
        return [getattr(self, name) for name in names] == [getattr(other, name) for name in names]
    return NotImplemented


_NAMES: dict = {}


def _record_names(cls) -> tuple:
    """The fields shown by repr and compared by ==, as @dataclass picks them."""
    names = _NAMES.get(cls)
    if names is None:
        import dataclasses

        fields = dataclasses.fields(cls)
        names = _NAMES[cls] = ([f.name for f in fields if f.repr], [f.name for f in fields if f.compare])
    return names


def record(cls):
    """``@dataclass`` for a class that writes its own ``__init__``: repr and == as @dataclass makes them."""
    cls = deferred_dataclass(cls)
    cls.__repr__ = _record_repr
    cls.__eq__ = _record_eq
    cls.__hash__ = None            # as @dataclass(eq=True) leaves a mutable class: unhashable
    return cls


_INTEGER_TEXT = LazyPattern(r"[+-]?[0-9]+")
_NUMBER_TEXT = LazyPattern(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number_text(text: str, integer: bool = True):
    """The int (or float) a text writes in ASCII digits, with an optional sign (and for a float a point and
    an exponent); ValueError otherwise. ``int()`` and ``float()`` also take other scripts' digits ("٣",
    "３"), underscores ("1_0") and for floats "inf" and "nan": none of those is a number a user typed
    for a queue, and a duration ("٣s") never took them either."""
    text = text.strip()
    if (_INTEGER_TEXT if integer else _NUMBER_TEXT).fullmatch(text) is None:
        raise ValueError(f"not a number: {text!r}")
    return int(text) if integer else float(text)


@deferred_dataclass
class Range:
    """A closed range of integers or finite floats; ``check`` returns the value or raises ValueError.

    Immutable and hashable, as ``@dataclass(frozen=True)`` makes it (see ``record`` above).
    """

    low: float
    high: float
    integer: bool = False
    low_open: bool = False        # the low end itself is excluded (a timeout of 0 means nothing)

    def __init__(self, low: float, high: float, integer: bool = False, low_open: bool = False) -> None:
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "integer", integer)
        object.__setattr__(self, "low_open", low_open)

    __repr__ = _record_repr
    __eq__ = _record_eq

    def __hash__(self) -> int:
        return hash((self.low, self.high, self.integer, self.low_open))

    def __setattr__(self, name: str, value) -> None:
        import dataclasses

        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        import dataclasses

        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low_open:
            return f"{kind} above {_num(self.low)} and at most {_num(self.high)}"
        return f"{kind} from {_num(self.low)} to {_num(self.high)}"

    def check(self, value, name: str = ""):
        out = self._number(value, name)
        if out != out or out < self.low or out > self.high or (self.low_open and out == self.low):
            raise self._error(name, value)
        return out

    def _error(self, name: str, value) -> ValueError:
        return ValueError(f"{name + ' ' if name else ''}must be {self.describe()}, got {shown(value)}")

    def _number(self, value, name: str):
        if isinstance(value, str):
            value = value.strip()
            try:
                value = number_text(value, self.integer)
            except ValueError:
                raise self._error(name, value) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(name, value)
        if self.integer and isinstance(value, float):
            if not value.is_integer():
                raise self._error(name, value)
            return int(value) if abs(value) <= INT64_MAX else value
        return value if self.integer else float(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


RANGES = {
    # job fields
    "max_retries": Range(0, 1000, integer=True),
    "priority": Range(-100, 100, integer=True),
    "timeout": Range(0, MAX_SECONDS, low_open=True),
    "delay": Range(0, MAX_SECONDS),
    "run_at": Range(0, MAX_TIME),
    "backoff_base": Range(1, 1000),
    "exit_code": Range(0, 255, integer=True),
    # options
    "concurrency": Range(1, 1_000_000, integer=True),
    "workers": Range(1, 1024, integer=True),
    "count": Range(0, INT64_MAX, integer=True),         # --limit, --offset
    "last": Range(1, INT64_MAX, integer=True),          # list --last
    "attempt": Range(1, INT64_MAX, integer=True),
    "age": Range(0, MAX_SECONDS),                       # purge --older-than
    # settings
}


def plain_text(value: str, name: str, limit: int = MAX_ARG_BYTES) -> str:
    """Text every store and exec can hold: no NUL byte, no lone surrogate (what a non-UTF-8 byte of a
    command line or file name decodes to), shorter than ``limit`` bytes; ValueError naming ``name``."""
    if "\0" in value:
        raise ValueError(f"{name} contains a NUL byte")
    try:
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode (it holds a lone surrogate, e.g. from a non-UTF-8 "
                         f"byte)") from None
    if size >= limit:                  # the limit counts the terminating NUL
        raise ValueError(f"{name} is {size} bytes, longer than the {limit - 1} bytes a process can be given"
                         if limit == MAX_ARG_BYTES else f"{name} is {size} bytes, more than {limit - 1}")
    return value


def one_line(value: str, name: str, limit: int = 1024) -> str:
    """:func:`plain_text` on one line: no control character (C0, DEL, C1) and no line or paragraph
    separator, which would break a table row or a log line (or steer a terminal)."""
    import unicodedata

    plain_text(value, name, limit)
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise ValueError(f"{name} must be one line without control characters")
    return value


def now() -> float:
    return time.time()


def iso(ts: Optional[float]) -> Optional[str]:
    """ISO-8601 UTC with millisecond precision, ending in Z; total: a time no platform can show is
    rendered clamped to 1970 or 9999 rather than failing the read it is part of."""
    if ts is None:
        return None
    from datetime import datetime, timezone     # only when rendering: most commands never need it

    ts = finite(ts, 0.0)
    dt = datetime.fromtimestamp(min(max(ts, 0.0), MAX_TIME), timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def finite(value, default=None):
    """``value`` as a finite float, or ``default`` for NaN, infinity and anything not a number."""
    if value is None:        # the common miss (a column not set): float(None) would build a TypeError's message
        return default
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return out if math.isfinite(out) else default


@record
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

    def __init__(self, owner: str, host: str, pid: int, pid_start: Optional[int], token: int, run_id: str,
                 expires: float, pgid: Optional[int] = None, started_at: Optional[float] = None,
                 expired: bool = False) -> None:
        self.owner = owner
        self.host = host
        self.pid = pid
        self.pid_start = pid_start
        self.token = token
        self.run_id = run_id
        self.expires = expires
        self.pgid = pgid
        self.started_at = started_at
        self.expired = expired


@record
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
    env: dict = factory(dict)
    timeout: Optional[float] = None
    source: Optional[str] = None
    fields: dict = factory(dict)   # fields declared by plugins
    tries: int = 0            # attempts counted against max_retries since enqueue or the last dlq retry
    unique_key: Optional[str] = None
    after: list = factory(list)     # ids of jobs this one waits for
    waiting_on: int = 0       # how many of them have not completed yet
    cancel_requested: bool = False
    labels: dict = factory(dict)   # KEY=VALUE tags, shown in `list`, filterable
    argv: Optional[list] = None   # run without a shell (command is then its shell-quoted form, for display)
    edits: list = factory(list)    # `queuectl edit`: when, and the values before
    last_error: Optional[str] = None
    exit_code: Optional[int] = None
    lease: Optional[Lease] = None

    def __init__(self, id: str, command: str, state: str = PENDING, attempts: int = 0, max_retries: int = 3,
                 created_at: float = 0.0, updated_at: float = 0.0, run_at: float = 0.0, priority: int = 0,
                 queue: str = "default", executor: str = "shell", cwd: Optional[str] = None, env: dict = FRESH,
                 timeout: Optional[float] = None, source: Optional[str] = None, fields: dict = FRESH,
                 tries: int = 0, unique_key: Optional[str] = None, after: list = FRESH, waiting_on: int = 0,
                 cancel_requested: bool = False, labels: dict = FRESH, argv: Optional[list] = None,
                 edits: list = FRESH, last_error: Optional[str] = None, exit_code: Optional[int] = None,
                 lease: Optional[Lease] = None) -> None:
        self.id = id
        self.command = command
        self.state = state
        self.attempts = attempts
        self.max_retries = max_retries
        self.created_at = created_at
        self.updated_at = updated_at
        self.run_at = run_at
        self.priority = priority
        self.queue = queue
        self.executor = executor
        self.cwd = cwd
        self.env = {} if env is FRESH else env
        self.timeout = timeout
        self.source = source
        self.fields = {} if fields is FRESH else fields
        self.tries = tries
        self.unique_key = unique_key
        self.after = [] if after is FRESH else after
        self.waiting_on = waiting_on
        self.cancel_requested = cancel_requested
        self.labels = {} if labels is FRESH else labels
        self.argv = argv
        self.edits = [] if edits is FRESH else edits
        self.last_error = last_error
        self.exit_code = exit_code
        self.lease = lease

    @property
    def retries_left(self) -> int:
        """Retries still allowed: the first attempt is not a retry, so a job that has not run has all of them."""
        if self.state in FINISHED_STATES:
            return 0
        return max(0, self.max_retries - max(0, self.tries - 1))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id, "command": self.command, "state": self.state,
            "attempts": self.attempts, "max_retries": self.max_retries,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "run_at": iso(self.run_at), "priority": self.priority, "queue": self.queue,
            "executor": self.executor, "cwd": self.cwd, "env": dict(self.env),
            "timeout": self.timeout, "source": self.source, "unique_key": self.unique_key,
            "after": list(self.after), "waiting_on": self.waiting_on,
            "retries_left": self.retries_left,
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


@record
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

    def __init__(self, job_id: str, attempt: int, outcome: str, started_at: float, finished_at: float,
                 exit_code: Optional[int] = None, signal: Optional[int] = None, error: Optional[str] = None,
                 stdout: bytes = b"", stderr: bytes = b"", worker: Optional[str] = None, host: Optional[str] = None,
                 pid: Optional[int] = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.outcome = outcome
        self.started_at = started_at
        self.finished_at = finished_at
        self.exit_code = exit_code
        self.signal = signal
        self.error = error
        self.stdout = stdout
        self.stderr = stderr
        self.worker = worker
        self.host = host
        self.pid = pid

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


@record
class ExecResult:
    """What an executor reports when a run ends."""

    outcome: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    error: Optional[str] = None
    stdout: bytes = b""
    stderr: bytes = b""

    def __init__(self, outcome: str, exit_code: Optional[int] = None, signal: Optional[int] = None,
                 error: Optional[str] = None, stdout: bytes = b"", stderr: bytes = b"") -> None:
        self.outcome = outcome
        self.exit_code = exit_code
        self.signal = signal
        self.error = error
        self.stdout = stdout
        self.stderr = stderr


@record
class RetryDecision:
    """The answer of the retry policy hook: retry after `delay` seconds, or give up."""

    retry: bool
    delay: float = 0.0
    reason: Optional[str] = None

    def __init__(self, retry: bool, delay: float = 0.0, reason: Optional[str] = None) -> None:
        self.retry = retry
        self.delay = delay
        self.reason = reason


_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZES = tuple(_UNITS.values())
#: A duration: a number of seconds alone, or numbers with units, each unit once and the largest first
#: (``1h30m``, ``1h 30m``); units are lower case, so ``10M`` (a month, to some tools) is refused.
_DURATION = LazyPattern(r"([0-9]+(?:\.[0-9]+)?)|" + r"\s*".join(rf"(?:([0-9]+(?:\.[0-9]+)?)\s*{u})?" for u in _UNITS))


def parse_duration(value, high: float = MAX_SECONDS) -> float:
    """Seconds from 90, "90", "90s", "10m", "2h", "1d", "1h30m" up to ``high``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        match = _DURATION.fullmatch(text)
        if match is None or not any(match.groups()):
            raise ValueError(f"not a duration: {value!r} (use e.g. 90, 30s, 10m, 2h, 1d, 1h30m)")
        number, *parts = match.groups()
        seconds = float(number) if number else sum(float(n) * size for n, size in zip(parts, _SIZES) if n)
    if seconds != seconds or seconds < 0:
        raise ValueError(f"a duration cannot be negative: {shown(value)}")
    if seconds > high:
        raise ValueError(f"a duration must be at most {_num(high)} seconds, got {shown(value)}")
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
    try:
        return RANGES["run_at"].check(parsed.timestamp(), "a time")
    except (OverflowError, ValueError):
        raise ValueError(f"time {value!r} is outside 1970-01-01 to 9999-12-31") from None


def comma_list(text: str, what: str) -> list:
    """The items of a comma-separated list (``a,b``), stripped. An empty item is refused, never dropped:
    `--after "$BUILD"` or `--queue "$Q"` with the variable unset must not mean "none" or "all"."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"{what} {text!r}: an empty name in the list; give names separated by commas")
    return items


# --- JSON text from outside: one strict reading for every boundary (the CLI, the dashboard) -------


def _json():
    import json      # imported by the commands that read JSON, not by every start

    return json


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


_STRICT: list = []       # the decoder of strict_loads, made at its first use


def strict_loads(text: str) -> Any:
    """``json.loads(text, parse_constant=_refuse_constant)`` refusing duplicate keys, with one decoder for every call
    (json.loads builds a decoder per call when given an option: a bulk enqueue parses one per line)."""
    if text.startswith("\ufeff"):             # as json.loads refuses it
        raise _json().JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return strict_decoder().decode(text)


def strict_decoder():
    if not _STRICT:
        _STRICT.append(_json().JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys))
    return _STRICT[0]


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refusing a key given twice: which of the values was meant is not ours to guess
    (json.loads keeps the last and drops the other without a word)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {_json().dumps(key)} appears twice in one object")
            seen.add(key)
    return obj
