"""The built-in spool folder: a job file dropped into a folder becomes jobs, exactly once.

The life of a drop (docs/spool.md describes the user's side)::

    spool/NAME --rename--> spool/work/CLAIM --jobs + receipt, one transaction--> spool/done/DROP_NAME
                                           \\--invalid--> spool/rejected/DROP_NAME and DROP_NAME.error

The rename is the claim: of two processes only one can win it, so two watchers never share
a file. CLAIM names the claiming host, pid and pid start time, so a file that a dead process
left in work/ is found and finished later; its receipt, keyed by the drop (never by the
content, so dropping the same file again makes new jobs), says whether its jobs are stored.
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from queuectl import hookimpl
from queuectl.config import Setting, UniqueKeys, between, choice, location, seconds
from queuectl.errors import Conflict, JobValidationError, NotFound, QueueError, StoreBusy, UsageError
from queuectl.models import MAX_INTERVAL
from queuectl.term import for_terminal
# The folder and this plugin's status section live in spool_folder, which is all `status` imports.
from queuectl.builtin.spool_folder import configured_folder, ignored, queuectl_status_info  # noqa: F401

if TYPE_CHECKING:
    import queue as queue_module

SUBFOLDERS = ("work", "done", "rejected")
CRASH_AFTER_CLAIM = "QUEUECTL_SPOOL_CRASH_AFTER_CLAIM"      # test hooks: die at the worst moments
CRASH_AFTER_INSERT = "QUEUECTL_SPOOL_CRASH_AFTER_INSERT"
CRASH_EXIT = 86
BATCH_FILES = 500            # files per transaction at most: the commit's cost shared, a crash's redo bounded
NAME_MAX = 255
CLAIM_PATTERN = re.compile(r"(\d{8}T\d{6}-[0-9a-f]{12})@([A-Za-z0-9._-]+)@(\d+)@(\d+)@(.+)", re.DOTALL)
FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"))

_warned: set = set()        # folders already warned about; inherited by a pool's forked sources process


def log(message: str) -> None:
    from queuectl.screen import log as diagnostic     # timestamped in a `worker start -v` pool

    # File names and reasons come from whoever drops files: escaped on a terminal.
    diagnostic(for_terminal(message, sys.stderr), "spool")


class Rejected(Exception):
    """A drop that can never become jobs; the message is written beside it in rejected/."""


# --- settings, options, status -------------------------------------------------------------------


@hookimpl
def queuectl_register_settings(register):
    register(Setting("spool", None, location, "Spool folder that `worker start` and `spool watch` ingest job files "
                     "from (default: spool/ beside config.yaml, when that folder exists).", file_only=True, path=True))
    register(Setting("spool-settle", 2.0, seconds(0.0, MAX_INTERVAL),
                     "Seconds a job file written in place must stay unchanged "
                     "before it is read, when no rename or close event says it is complete."))
    register(Setting("spool-rescan", 10.0, seconds(0.05, MAX_INTERVAL),
                     "Seconds between full rescans of the spool folder "
                     "(they catch files whose events were missed)."))
    register(Setting("spool-max-size", 1048576, between(1, 2 ** 30, integer=True),
                     "Largest job file accepted, in bytes."))
    register(Setting("spool-observer", "native", choice("native", "polling", "off"), "File events: native "
                     "(inotify on Linux), polling (for network filesystems), off (periodic rescans only)."))


@hookimpl
def queuectl_worker_options():
    return [
        click.Option(["--spool", "spool"], metavar="DIR", callback=_preflight,
                     help="Ingest job files dropped into DIR (default: the spool setting)."),
        click.Option(["--no-spool", "no_spool"], is_flag=True, callback=_preflight,
                     help="Watch no spool folder."),
    ]


def _preflight(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Check the folder while `worker start` parses its options: a refused folder stops the command
    with one line and exit 2 before any process forks (the sources process could only log it)."""
    other = "no_spool" if param.name == "spool" else "spool"
    if other in ctx.params:      # click runs both callbacks; act in the second, when both are known
        from queuectl.command import get_queue

        given = dict(ctx.params, **{param.name: value})
        folder = chosen_folder(get_queue(), given["spool"], given["no_spool"])
        if folder is not None:
            prepare(folder)
    return value


@hookimpl
def queuectl_job_sources(queue, options):
    folder = chosen_folder(queue, options.get("spool"), options.get("no_spool", False))
    return [SpoolWatcher(queue, folder)] if folder is not None else None


# --- the folder ----------------------------------------------------------------------------------


def durable(queue) -> bool:
    """durability: full asks every acknowledged write to survive power loss; the claim is one."""
    try:
        return queue.config.get("durability") == "full"
    except QueueError:                   # the setting belongs to the SQLite plugin, which may be blocked
        return False


def chosen_folder(queue, flag: Optional[str] = None, disabled: bool = False) -> Optional[Path]:
    if flag is not None and disabled:
        raise UsageError("give --spool or --no-spool, not both")
    if flag is not None:
        try:
            location(flag)              # an empty folder given is refused, as the setting's value is
        except ValueError as exc:
            raise UsageError(f"spool folder {flag!r}: {exc}") from None
    if disabled:
        return None
    folder = Path(os.path.abspath(os.path.expanduser(flag))) if flag else configured_folder(queue)
    if folder is not None:
        # Every file of the folder is taken as a drop: the store's own files (its -wal and -shm beside
        # it) and the config file would be moved into rejected/, under the processes using them.
        db = queue.db
        own = [("the store", Path(db)) if "://" not in db else None,
               ("the config file", queue.config.file) if queue.config.file is not None else None]
        real = Path(os.path.realpath(folder))
        for what, path in filter(None, own):
            if real in (Path(os.path.abspath(path)).parent, Path(os.path.realpath(path)).parent):
                raise UsageError(f"refusing spool folder {folder}: it holds {what} ({path}), which it would "
                                 f"take as a job file; drop jobs into a folder of their own")
    return folder


def prepare(folder: Path) -> None:
    """Create what is missing (mode 0700) and refuse folders that other users could drop jobs into."""
    for path in (folder, *(folder / name for name in SUBFOLDERS)):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"cannot create spool folder {path}: {exc.strerror}") from None
        check_folder(path, follow=path == folder)


def check_folder(path: Path, follow: bool) -> None:
    """A file in the spool runs as a command under our account: whoever can write there can run it."""
    try:
        info = os.stat(path) if follow else os.lstat(path)   # only the spool itself may be a symlink
    except OSError as exc:
        raise UsageError(f"cannot use spool folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"spool folder {path} is not a folder")
    if info.st_mode & stat.S_IWOTH:
        raise UsageError(f"refusing spool folder {path}: every user can write it, and its files run as commands "
                         f"under your account (run: chmod o-w {path})")
    if info.st_mode & stat.S_IWGRP and str(path) not in _warned:
        _warned.add(str(path))
        log(f"warning: {path} is group-writable: members of its group can enqueue commands that run as you")


# --- drops ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Drop:
    """One dropped file, named in work/ as DROP@HOST@PID@PIDSTART@NAME."""

    drop_id: str
    host: str
    pid: int
    pid_start: int
    name: str

    @property
    def claim(self) -> str:
        return f"{self.drop_id}@{self.host}@{self.pid}@{self.pid_start}@{self.name}"

    @property
    def key(self) -> str:
        return f"spool:{self.drop_id}"

    @property
    def filed_name(self) -> str:
        return f"{self.drop_id}_{self.name}"          # unique, and sorts by drop time in done/ and rejected/

    @property
    def label(self) -> str:
        return os.fsencode(self.name).decode("utf-8", "replace")   # the store holds text, not raw bytes

    @classmethod
    def parse(cls, claim: str) -> Optional["Drop"]:
        match = CLAIM_PATTERN.fullmatch(claim)
        if match is None:
            return None
        drop_id, host, pid, start, name = match.groups()
        return cls(drop_id, host, int(pid), int(start), name)

    @classmethod
    def new(cls, host: str, name: str, pid: int, pid_start: int) -> "Drop":
        drop_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + os.urandom(6).hex()
        drop = cls(drop_id, host, pid, pid_start, name)
        room = NAME_MAX - (len(os.fsencode(drop.claim)) - len(os.fsencode(name)))
        drop.name = os.fsdecode(os.fsencode(name)[:room])     # a long name is cut to fit the claim
        return drop


def read_job_file(path: Path, cap: int) -> bytes:
    """Read a claimed file without following a link, blocking on a FIFO or reading past the cap.

    A first look with lstat keeps devices from even being opened (opening one can act, as a tape
    rewinds); the checks that count are made on the open descriptor, which cannot be swapped.
    """
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise Rejected(not_regular(mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise                            # not the file's fault: another process filed it
    except OSError as exc:
        raise Rejected(open_error(exc)) from None
    try:
        check_open_file(os.fstat(fd), cap)
        return read_capped(fd, cap)
    finally:
        os.close(fd)


def read_capped(fd: int, cap: int) -> bytes:
    chunks, size = [], 0
    while size <= cap:
        chunk = os.read(fd, cap + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > cap:
        raise Rejected(f"grew past spool-max-size ({cap} bytes) while being read")
    return b"".join(chunks)


def open_error(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "a symbolic link; links are not followed, it was not read"
    if exc.errno == errno.ENXIO:
        return "a socket; it was not read"
    return f"cannot be opened: {exc.strerror}"


def not_regular(mode: int) -> str:
    kind = next((name for test, name in FILE_KINDS if test(mode)), "something else")
    return f"{kind}, not a regular file; it was not read"


def check_open_file(info: os.stat_result, cap: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise Rejected(not_regular(info.st_mode))
    if info.st_uid not in (os.geteuid(), 0):
        raise Rejected(f"owned by another user (uid {info.st_uid}); it was not read")
    if info.st_nlink > 1:       # a hard link to someone else's file (say /etc/shadow) passes the owner check
        raise Rejected(f"has {info.st_nlink} hard links; only a file with one link is read, it was not read")
    if info.st_size > cap:
        raise Rejected(f"{info.st_size} bytes, larger than spool-max-size ({cap} bytes); it was not read")


def parse_job_file(queue, name: str, data: bytes) -> list:
    """Job specs from the first parser plugin that takes the file (the built-in YAML one takes any)."""
    try:
        specs = queue.pm.hook.queuectl_parse_job_file(path=name, data=data, queue=queue)
    except (ValueError, QueueError) as exc:
        raise Rejected(str(exc)) from None
    except Exception as exc:     # a parser plugin's bug: retrying would fail the same way, so say so
        raise Rejected(f"the job file parser failed: {type(exc).__name__}: {exc}") from None
    if specs is None:
        raise Rejected("no job file parser accepts this file")
    if not isinstance(specs, list) or not specs:
        raise Rejected("the file holds no jobs")
    for index, spec in enumerate(specs):
        check_plain(spec, which(index, len(specs)))
    return specs


def transient(exc: BaseException) -> bool:
    """True for a failure that is surely the store's (locked, out of space, a file system error),
    which a later rescan retries. Anything else is the file's when the store still answers."""
    text = str(exc).lower()
    return isinstance(exc, (StoreBusy, OSError)) or "disk is full" in text or "no space" in text


def which(index: int, total: int) -> str:
    return "" if total == 1 else f"job {index + 1} of {total}: "


def check_plain(spec: Any, where: str) -> None:
    """Only JSON's types reach the store: YAML dates, sets and binary would not survive it."""
    if not isinstance(spec, dict):
        raise Rejected(f"{where}expected a mapping of job fields, got {kind_of(spec)}")

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise Rejected(f"{where}{path or 'key'} {key!r} is not a string")
                walk(item, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for position, item in enumerate(value):
                walk(item, f"{path}[{position}]")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise Rejected(f"{where}{path} has the wrong type: {kind_of(value)} (quote it to make a string)")
    walk(spec, "")


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


# --- the built-in format: YAML -------------------------------------------------------------------


@hookimpl(trylast=True)
def queuectl_parse_job_file(path, data, queue):
    """YAML, for any file that no other parser plugin took."""
    return job_specs(load_yaml(data))


_LOADER: list = []      # safe_loader's class, made at its first use


def safe_loader():
    """yaml.safe_load's loader, backed by libyaml when it is installed: the same safe constructor
    (plain data only, never Python objects), about six times faster on small files; a key given
    twice in a mapping is refused (``config.UniqueKeys``)."""
    if not _LOADER:
        import yaml

        class UniqueKeyLoader(UniqueKeys, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            pass

        _LOADER.append(UniqueKeyLoader)
    return _LOADER[0]


def load_yaml(data: bytes) -> Any:
    import yaml

    try:
        refuse_anchors(data)
        return yaml.load(data, Loader=safe_loader())  # noqa: S506 - a safe loader, see safe_loader()
    except yaml.MarkedYAMLError as exc:
        where = f"{at(exc.problem_mark)}: " if exc.problem_mark else ""
        context = f" ({exc.context} at {at(exc.context_mark)})" if exc.context and exc.context_mark else ""
        raise ValueError(f"{where}invalid YAML: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:       # e.g. bytes that are not text: one line for the .error file
        raise ValueError(f"invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ValueError("invalid YAML: nested too deeply") from None


def refuse_anchors(data: bytes) -> None:
    """Anchors and aliases let a small file expand into a huge one ("billion laughs"): refuse them."""
    import yaml

    if b"&" not in data and b"*" not in data:
        return                          # an anchor needs a '&' and an alias a '*' (in UTF-16 and -32 too)
    for event in yaml.parse(data, Loader=safe_loader()):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ValueError(f"{at(event.start_mark)}: YAML anchors and aliases are not accepted")


def at(mark) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}"


def job_specs(document: Any) -> list:
    """One job (a mapping with command:) or several (a mapping with only jobs: [...]).

    Public for parser plugins: a format that decodes to the same shape can reuse it.
    """
    if document is None:
        raise ValueError("the file is empty; expected a mapping with command: or jobs:")
    if not isinstance(document, dict):
        raise ValueError(f"expected a mapping with command: or jobs:, got {kind_of(document)}")
    if "jobs" not in document:
        return [document]
    extra = sorted(str(key) for key in document if key != "jobs")
    if extra:
        raise ValueError(f"a file with jobs: holds nothing else (found {extra[0]!r}); "
                         f"put each job's fields inside its entry")
    if not isinstance(document["jobs"], list) or not document["jobs"]:
        raise ValueError("jobs: must be a non-empty list of job mappings")
    return document["jobs"]


# --- one spool folder ----------------------------------------------------------------------------


class Spool:
    """Claims, reads, enqueues and files away the drops of one folder, up to BATCH_FILES at a time."""

    def __init__(self, queue, folder: Path, verbose: bool = False, stopping: Optional[threading.Event] = None):
        from queuectl.process import host_id

        self.queue = queue
        self.folder = Path(folder)
        self.work = self.folder / "work"
        self.top, self.work_dir = str(self.folder), str(self.work)     # plain strings on the per-file path
        self.verbose = verbose
        self.stopping = stopping or threading.Event()
        self.host = re.sub(r"[^A-Za-z0-9._-]", "_", host_id(queue)) or "_"
        self.claimer = (0, 0)                     # (pid, pid start time), looked up once per process
        self.settling: dict[str, tuple] = {}      # name -> (stat signature, monotonic time first seen so)
        self.counts = {"files": 0, "jobs": 0, "rejected": 0, "waiting": 0}
        queue.store  # noqa: B018 - open it now: settings made with `config set` live there
        self.refresh()
        self.durable = durable(queue)

    def refresh(self) -> None:
        """Re-read the settings, so `queuectl config set spool-...` reaches a running watcher."""
        config = self.queue.config
        config.refresh()
        self.settle = config.get("spool-settle")
        self.rescan_interval = config.get("spool-rescan")
        self.max_size = config.get("spool-max-size")

    @property
    def tick(self) -> float:
        return min(max(self.settle / 4, 0.05), 0.5)

    # finding complete files

    def candidates(self) -> list:
        return [entry.name for entry in os.scandir(self.folder)
                if not ignored(entry.name) and not entry.is_dir(follow_symlinks=False)]

    def observe(self, name: str) -> None:
        """Note a file's size and times; it is due once they stay the same for the settle time."""
        try:
            info = os.lstat(f"{self.top}/{name}")
        except FileNotFoundError:
            self.settling.pop(name, None)
            return
        if stat.S_ISDIR(info.st_mode):
            return
        signature = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_mode)
        seen = self.settling.get(name)
        if seen is None or seen[0] != signature:
            # Only a regular file can be half-written; anything else is rejected unread at once.
            since = time.monotonic() if stat.S_ISREG(info.st_mode) else float("-inf")
            self.settling[name] = (signature, since)

    def due(self) -> list:
        for name in list(self.settling):
            self.observe(name)
        now = time.monotonic()
        return [name for name, (_, since) in self.settling.items() if now - since >= self.settle]

    def rescan(self) -> None:
        """The safety net for missed events; also finishes what dead processes left in work/."""
        self.refresh()
        prepare(self.folder)            # recreates a subfolder someone removed
        self.resume()
        for name in self.candidates():
            self.observe(name)

    # claiming and ingesting

    def take(self, names: list) -> None:
        """Claim complete files by renaming them into work/ (of two racing processes one rename
        wins), then ingest them, BATCH_FILES per transaction."""
        names = list(dict.fromkeys(names))        # two events for one name: one claim
        for start in range(0, len(names), BATCH_FILES):
            if self.stopping.is_set():
                return                   # the rest stay in the folder, unclaimed
            drops = [drop for drop in map(self.claim, names[start:start + BATCH_FILES]) if drop is not None]
            if not drops:
                continue
            if self.durable:
                self.sync_claim()
            if os.environ.get(CRASH_AFTER_CLAIM) == "1":
                os._exit(CRASH_EXIT)
            self.ingest(drops)

    def claim(self, name: str) -> Optional[Drop]:
        self.settling.pop(name, None)
        source = f"{self.top}/{name}"
        try:
            if ignored(name) or stat.S_ISDIR(os.lstat(source).st_mode):
                return None
            drop = Drop.new(self.host, name, *self.me())
            os.rename(source, f"{self.work_dir}/{drop.claim}")
        except FileNotFoundError:
            return None                  # another watcher took it, or its writer removed it
        return drop

    def me(self) -> tuple:
        """This process's pid and start time (a pool's sources process is forked: the pid is checked)."""
        from queuectl.process import pid_start_time

        pid = os.getpid()
        if self.claimer[0] != pid:
            self.claimer = (pid, pid_start_time(pid) or 0)
        return self.claimer

    def sync_claim(self) -> None:
        """Make the claims survive a power loss before their jobs are stored: undone after the insert,
        a claim would put the file back in the folder as a new drop, and its jobs would be made twice."""
        for folder in (self.folder, self.work):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def resume(self) -> None:
        """Finish files that a dead process claimed: file them if their receipt exists, else ingest them."""
        from queuectl.process import pid_alive

        left = []
        for claim in sorted(os.listdir(self.work)):
            drop = Drop.parse(claim)
            if drop is None or drop.host != self.host:
                continue                 # not ours to judge: only its own host can tell if its claimer lives
            if drop.pid == os.getpid() or not pid_alive(drop.pid, drop.pid_start or None):
                left.append(drop)
        for start in range(0, len(left), BATCH_FILES):
            self.ingest(left[start:start + BATCH_FILES], resumed=True)

    def ingest(self, drops: list, resumed: bool = False) -> None:
        """Read and check each file, store the jobs and receipts of all in one transaction, then move
        them to done/: a crash in between is finished by resume(), which finds the receipts and only
        moves the files. A file that cannot become jobs is rejected on its own before the transaction;
        when the store refuses the batch, its files are stored one by one, so only the culprit is."""
        if resumed:
            drops = [drop for drop in drops if not self.stored_before(drop)]
        defaults = self.queue.job_defaults()
        ready = [item for item in (self.read(drop, defaults) for drop in drops) if item is not None]
        if len(ready) > 1 and hasattr(self.queue.store, "add_deliveries"):
            try:
                stored = self.store(ready)
            except Exception as exc:
                if transient(exc) or not self.store_answers():
                    raise                # the store is away, busy or full: the rescan retries the files
            else:
                self.inserted()
                for (drop, _, _), ids in zip(ready, stored):
                    self.done(drop, ids)
                return
        for item in ready:               # one file, a store without batches, or a batch refused
            self.ingest_one(item)

    def stored_before(self, drop: Drop) -> bool:
        if self.queue.store.get_receipt(drop.key) is None:
            return False
        self.file(drop, "done")
        return True

    def read(self, drop: Drop, defaults: dict) -> Optional[tuple]:
        """(drop, jobs, receipt) for a file that makes valid jobs; None once it is rejected or gone."""
        import hashlib

        try:
            data = read_job_file(f"{self.work_dir}/{drop.claim}", self.max_size)
            jobs = self.build_jobs(drop, parse_job_file(self.queue, drop.name, data), defaults)
        except FileNotFoundError:
            return None                  # two processes resumed the same file; the other one filed it
        except Rejected as exc:
            self.reject(drop, str(exc))
            return None
        except Exception as exc:         # whatever this one file makes go wrong, the folder keeps flowing
            if transient(exc) or not self.store_answers():
                raise
            self.reject(drop, refused(exc))
            return None
        return drop, jobs, {"key": drop.key, "name": drop.label, "sha256": hashlib.sha256(data).hexdigest()}

    def build_jobs(self, drop: Drop, specs: list, defaults: dict) -> list:
        """Validate a file's jobs as enqueue_many does, naming the failing job of a file with several."""
        from queuectl.queue import check_no_cycle

        jobs = []
        for index, spec in enumerate(specs):
            try:
                jobs.append(self.queue.build_job(spec, f"spool:{drop.label}", defaults))
            except (JobValidationError, UsageError, NotFound) as exc:
                raise Rejected(f"{which(index, len(specs))}{exc}") from None
        try:
            check_no_cycle(jobs)
        except JobValidationError as exc:
            raise Rejected(str(exc)) from None
        return jobs

    def store(self, ready: list) -> list:
        """Store the jobs and receipts of one file, or of several in one transaction (add_deliveries)."""
        store = self.queue.store
        if len(ready) == 1:
            [(_, jobs, receipt)] = ready
            ids = [store.add_jobs(jobs, receipt=receipt)]
        else:
            ids = store.add_deliveries([(jobs, receipt) for _, jobs, receipt in ready])
        store.notify()
        return ids

    def ingest_one(self, item: tuple) -> None:
        drop = item[0]
        try:
            [ids] = self.store([item])
        except Conflict as exc:
            if self.queue.store.get_receipt(drop.key) is None:
                self.reject(drop, str(exc))
                return
            ids = []                     # a racing resumer stored this very drop first
        except (UsageError, NotFound) as exc:
            self.reject(drop, str(exc))
            return
        except Exception as exc:
            if transient(exc) or not self.store_answers():
                raise
            self.reject(drop, refused(exc))
            return
        self.inserted()
        self.done(drop, ids)

    @staticmethod
    def inserted() -> None:
        if os.environ.get(CRASH_AFTER_INSERT) == "1":
            os._exit(CRASH_EXIT)

    def done(self, drop: Drop, ids: list) -> None:
        self.file(drop, "done")
        if not ids:
            return                       # stored by the other resumer: its jobs exist once
        self.counts["files"] += 1
        self.counts["jobs"] += len(ids)
        if self.verbose:
            log(f"{drop.label}: {len(ids)} job(s) {' '.join(ids)}")

    def store_answers(self) -> bool:
        """Whether the store still reads: if so, the error was this file's, not the store's."""
        try:
            self.queue.store.get_receipt("")
            return True
        except Exception:
            return False

    # filing away

    def file(self, drop: Drop, subfolder: str) -> None:
        try:
            os.rename(f"{self.work_dir}/{drop.claim}", f"{self.top}/{subfolder}/{drop.filed_name}")
        except FileNotFoundError:
            pass                         # a racing resumer filed it already

    def reject(self, drop: Drop, reason: str) -> None:
        sidecar = self.folder / "rejected" / (drop.filed_name + ".error")
        fd = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
            out.write(f"{drop.label}: {reason}\n")
        self.file(drop, "rejected")
        self.counts["rejected"] += 1
        log(f"rejected {drop.label}: {reason}")

    def scan_once(self) -> dict:
        """`spool scan`: ingest what is there now; a file still changing after the settle time waits."""
        self.rescan()
        if any(since > float("-inf") for _, since in self.settling.values()):
            time.sleep(self.settle)      # "unchanged for the settle time" needs the time to pass
        self.take(self.due())
        self.counts["waiting"] = len(self.settling)
        return dict(self.counts)


def refused(exc: Exception) -> str:
    return f"refused: {exc}" if isinstance(exc, QueueError) else f"refused: {type(exc).__name__}: {exc}"


# --- the watcher ---------------------------------------------------------------------------------

RESCAN = ("", "rescan")          # in the inbox: events were lost, rescan now


class EventInbox:
    """The watchdog handler: passes new names to the ingesting thread (which alone uses the store).

    A rename into place or a close after writing means the file is complete; a creation (also a
    file moved in from another folder) only starts the settle clock.
    """

    READY = {"moved": True, "closed": True, "created": False}

    def __init__(self, folder: str, inbox: queue_module.SimpleQueue):
        self.folder = folder
        self.inbox = inbox

    def dispatch(self, event) -> None:
        if event.is_directory or event.event_type not in self.READY:
            return
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        folder, name = os.path.split(path)
        if folder == self.folder and not ignored(name):
            self.inbox.put((name, self.READY[event.event_type]))


class Inotify:
    """Linux file events for the top of the spool folder, read from inotify itself.

    watchdog's observer pairs every move it sees with a linear search of the moves still waiting
    for their other half: with thousands of files dropped at once that search cost more than the
    ingesting (see docs/spool.md, Performance). The spool needs no pairing, only the names that
    arrive, as EventInbox passes them on: a rename into the folder or a close after writing means
    complete, a creation starts the settle clock. The watch is on the folder alone, so the spool's
    own moves (out to work/, done/, rejected/) make no events at all. A lost event (the kernel's
    queue overflowed) asks for a rescan at once.
    """

    CLOSE_WRITE, MOVED_TO, CREATE, Q_OVERFLOW, ISDIR, ONLYDIR = 0x8, 0x80, 0x100, 0x4000, 0x40000000, 0x1000000

    def __init__(self, folder: str, inbox: queue_module.SimpleQueue):
        import ctypes
        import struct

        self.inbox = inbox
        self.header = struct.Struct("iIII")      # wd, mask, cookie, length of the name that follows
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        mask = self.CLOSE_WRITE | self.MOVED_TO | self.CREATE | self.ONLYDIR
        if libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
            error = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(error, os.strerror(error))
        self.wake_r, self.wake_w = os.pipe()
        self.thread = threading.Thread(target=self._run, name="queuectl-spool-events", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        os.write(self.wake_w, b"!")

    def join(self) -> None:
        self.thread.join()
        for fd in (self.fd, self.wake_r, self.wake_w):
            os.close(fd)

    def _run(self) -> None:
        import select

        poller = select.poll()            # not select(): a descriptor above 1023 is fine
        for fd in (self.fd, self.wake_r):
            poller.register(fd, select.POLLIN)
        while True:
            if any(fd == self.wake_r for fd, _ in poller.poll()):
                return
            self.parse(os.read(self.fd, 1 << 16))

    def parse(self, data: bytes) -> None:
        offset, header = 0, self.header
        while offset < len(data):
            _, mask, _, length = header.unpack_from(data, offset)
            name = os.fsdecode(data[offset + header.size:offset + header.size + length].rstrip(b"\0"))
            offset += header.size + length
            if mask & self.Q_OVERFLOW:
                self.inbox.put(RESCAN)
            elif name and not mask & self.ISDIR and not ignored(name):
                self.inbox.put((name, bool(mask & (self.MOVED_TO | self.CLOSE_WRITE))))


class SpoolWatcher:
    """The spool as a job source: file events and periodic rescans feed one ingesting thread."""

    def __init__(self, queue, folder: Path, verbose: bool = False):
        self.folder = Path(folder)
        self.queue = queue
        self.verbose = verbose
        import queue as queue_module     # (imported here: `status` loads this module for its section)

        self.inbox: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self.stopping = threading.Event()
        self.observer = None
        self.thread: Optional[threading.Thread] = None

    def start(self) -> None:
        prepare(self.folder)
        spool = Spool(self.queue, self.folder, self.verbose, self.stopping)
        self.queue.store.lock_timeout = None     # like a worker: wait out a locked store, never give up
        self.observer = self._start_observer(spool)      # before the first scan: no gap to miss a drop
        self.thread = threading.Thread(target=self._run, args=(spool,), name="queuectl-spool", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.inbox.put(None)
        if self.thread is not None:
            # Bounded: leaving mid-batch is safe (the transaction rolls back or the receipts are kept,
            # and the next start resumes the files from work/), only a stuck store makes us wait.
            self.thread.join(timeout=10.0)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join()

    def _start_observer(self, spool: Spool):
        kind = self.queue.config.get("spool-observer")
        if kind == "off":
            return None
        try:
            if kind == "native" and sys.platform.startswith("linux"):
                observer = Inotify(str(self.folder), self.inbox)
            else:
                observer = make_observer(kind)
                schedule(observer, EventInbox(str(self.folder), self.inbox), str(self.folder),
                         recursive=kind == "native")
            observer.start()
        except OSError as exc:           # e.g. out of inotify watches: rescans still find every file
            log(f"file events unavailable ({exc.strerror or exc}); rescanning every {spool.rescan_interval:g} s")
            return None
        return observer

    def _run(self, spool: Spool) -> None:
        next_rescan = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_rescan:
                    spool.rescan()
                    next_rescan = time.monotonic() + spool.rescan_interval
                spool.take(spool.due())
                if self._drain(spool, min(spool.tick, max(0.0, next_rescan - time.monotonic()))):
                    next_rescan = 0.0
            except Exception as exc:     # a folder or store problem: the rescan retries what is left
                log(f"{type(exc).__name__}: {exc}; retrying")
                self.stopping.wait(1.0)

    def _drain(self, spool: Spool, timeout: float) -> bool:
        """Wait for events, then take every file that is complete by now, in batches: the files that
        arrive while a batch is stored make the next one. True when events were lost (rescan now)."""
        import queue as queue_module

        ready, lost = [], False
        try:
            item = self.inbox.get(timeout=timeout)
            while item is not None and not self.stopping.is_set():
                name, complete = item
                if item is RESCAN:
                    lost = True
                elif complete:
                    ready.append(name)
                    if len(ready) >= BATCH_FILES:
                        spool.take(ready)
                        ready = []
                else:
                    spool.observe(name)
                item = self.inbox.get_nowait()
        except queue_module.Empty:
            pass
        spool.take(ready)
        return lost


def make_observer(kind: str):
    if kind == "polling":
        from watchdog.observers.polling import PollingObserver

        return PollingObserver(timeout=1.0)
    from watchdog.observers import Observer

    return Observer()


def schedule(observer, handler, folder: str, recursive: bool) -> None:
    """Watch the folder for the events used (fewer wake-ups, less risk of overflowing the kernel's queue).

    Recursive for inotify only so that our claim, a rename into work/, is seen as one move: watchdog
    holds an unpaired move-out back for half a second, and every event queued behind it waits too.
    The handler still looks only at the top level; polling stays flat, not to re-list done/.
    """
    from watchdog.events import FileClosedEvent, FileCreatedEvent, FileMovedEvent

    try:
        observer.schedule(handler, folder, recursive=recursive,
                          event_filter=[FileCreatedEvent, FileMovedEvent, FileClosedEvent])
    except TypeError:                    # watchdog < 4 has no event_filter
        observer.schedule(handler, folder, recursive=recursive)


# --- commands ------------------------------------------------------------------------------------


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import emit_json, get_queue

    def folder_of(queue, folder: Optional[str], create: bool = True) -> Path:
        path = chosen_folder(queue, folder)
        if path is None:
            raise UsageError("no spool folder: give DIR, or set spool in config.yaml")
        if folder is not None and not create and not os.path.isdir(path):    # a typo must not make a new folder
            raise UsageError(f"no spool folder {path} ('queuectl spool watch' creates one)")
        prepare(path)
        return path

    @cli.group("spool")
    def spool_group():
        """Job files dropped into a folder become jobs (see docs/spool.md).

        \b
        Examples:
          queuectl spool scan            # once, e.g. from cron
          queuectl spool watch ~/drop
        """

    @spool_group.command("watch")
    @click.argument("folder", required=False, metavar="[DIR]")
    @click.option("-v", "--verbose", is_flag=True, help="Log every ingested file.")
    def watch(folder, verbose):
        """Ingest files dropped into DIR (default: the spool setting) until SIGTERM or SIGINT; runs no jobs.

        \b
        Example:
          queuectl spool watch ~/drop -v
        """
        queue = get_queue()
        run_until_signal(SpoolWatcher(queue, folder_of(queue, folder), verbose))

    @spool_group.command("scan")
    @click.argument("folder", required=False, metavar="[DIR]")
    @click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
    def scan(folder, as_json):
        """Ingest the files in DIR (default: the spool setting) once, then exit.

        \b
        Example:
          queuectl spool scan --json
        """
        queue = get_queue()
        path = folder_of(queue, folder, create=False)
        counts = Spool(queue, path).scan_once()
        if as_json:
            emit_json(dict(counts, folder=str(path)))
            return
        click.echo(f"{path}: {counts['files']} file(s) ingested ({counts['jobs']} job(s)), "
                   f"{counts['rejected']} rejected, {counts['waiting']} still being written")


def run_until_signal(watcher: SpoolWatcher) -> None:
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    watcher.start()
    events = watcher.queue.config.get("spool-observer") if watcher.observer is not None else "off"
    log(f"watching {watcher.folder} (file events: {events}; "
        f"rescan every {watcher.queue.config.get('spool-rescan'):g} s)")
    try:
        while not stop.wait(0.5):        # short waits: signal handlers run between them
            pass
    finally:
        watcher.stop()
