"""The built-in shell executor: ``/bin/sh -c COMMAND`` in its own session and process group.

Every process of an attempt carries ``QUEUECTL_RUN_ID`` in its environment. That tag,
not the process group alone, is how the attempt's processes are found again: it follows
children that call ``setsid`` or double-fork, and it cannot match a stranger that reused
a pid or a group id. The worker is a child subreaper, so escaped descendants stay its
children while it lives.
"""
from __future__ import annotations

import errno
import io
import os
import select
import signal
import sys
import subprocess
import threading
import time
from typing import Optional

from queuectl import hookimpl
from queuectl.config import Setting, between
from queuectl.models import EXITED, SUCCEEDED, ExecResult
from queuectl.output import truncation_marker
from queuectl.process import is_subreaper

TAG = b"QUEUECTL_RUN_ID="
CHUNK = 65536
EXIT_DRAIN = 0.1      # seconds to wait for pipes to close after the command exits
# Live output is handed to the store once the command has been quiet for LIVE_QUIET (so a line printed in
# two writes goes out whole) or its oldest unsent byte is LIVE_INTERVAL old, never twice within LIVE_GAP.
LIVE_QUIET = 0.005
LIVE_INTERVAL = 0.1
LIVE_GAP = 0.05
LIVE_PIECE = 65536    # largest stored chunk, so trimming the middle of a long output keeps the store near the cap


@hookimpl
def queuectl_register_executors(register):
    register("shell", ShellExecutor())


@hookimpl
def queuectl_register_settings(register):
    register(Setting("output-cap", 1048576, between(64, 2 ** 30, integer=True),
                     "Bytes of stdout and of stderr kept per attempt: half from the start, half from the end."))


class CappedBuffer:
    """Keeps the head and the tail of a stream, so a huge output stays small and the last error survives.

    At most ``cap`` bytes are kept (half from the start, half from the end); memory stays
    below about twice that whatever the stream's length.
    """

    def __init__(self, cap: int):
        self.half = max(1, cap // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.half:
                del self.tail[:len(self.tail) - self.half]

    def value(self) -> bytes:
        if self.total <= 2 * self.half:
            return bytes(self.head + self.tail)
        tail = self.tail[-self.half:]
        dropped = self.total - len(self.head) - len(tail)
        return bytes(self.head) + truncation_marker(dropped) + bytes(tail)

    @property
    def window(self) -> int:
        """Where the kept tail starts, as an offset in the stream: what lies between head and window is dropped."""
        return max(len(self.head), self.total - self.half)

    def since(self, offset: int) -> list[tuple[int, bytes]]:
        """What is kept of the stream from ``offset`` on, as (offset, bytes) pieces of at most LIVE_PIECE."""
        found = []
        if offset < len(self.head):
            found.append((offset, bytes(self.head[offset:])))
            offset = len(self.head)
        start = max(offset, self.window)
        if start < self.total:
            found.append((start, bytes(self.tail[len(self.tail) - (self.total - start):])))
        return [(at + i, data[i:i + LIVE_PIECE]) for at, data in found for i in range(0, len(data), LIVE_PIECE)]


class LiveOutput:
    """Hands what a running command prints to ``sink`` (the store), batched.

    A lone line goes out within LIVE_QUIET; a steady stream once per LIVE_INTERVAL; at most one
    write per LIVE_GAP whatever the output looks like. A command that prints nothing costs
    nothing. Only what the cap keeps is sent, so the store holds about ``output-cap`` per stream.
    """

    def __init__(self, sink, buffers: dict):
        self.sink = sink
        self.buffers = buffers        # stream name -> CappedBuffer
        self.sent = {name: 0 for name in buffers}
        self.unsent = False           # output arrived that the sink has not taken yet
        self.first = self.latest = self.last = 0.0   # first unsent byte, latest byte, last write

    def arrived(self) -> None:
        """Output was read into a buffer (told by the reader: a silent command costs no look)."""
        now = time.monotonic()
        if not self.unsent:
            self.first, self.unsent = now, True
        self.latest = now

    def due_in(self) -> Optional[float]:
        """Seconds until unsent output is due, or None when nothing waits."""
        if not self.unsent:
            return None
        now = time.monotonic()
        due = max(min(self.latest + LIVE_QUIET, self.first + LIVE_INTERVAL), self.last + LIVE_GAP)
        return max(0.0, due - now)

    def flush(self, force: bool = False) -> None:
        due = self.due_in()
        if due is None or (due > 0 and not force):
            return
        chunks = [(name, at, data) for name, buf in self.buffers.items() for at, data in buf.since(self.sent[name])]
        keep = {name: (len(buf.head), buf.window) for name, buf in self.buffers.items()}
        self.last = time.monotonic()
        if self.sink(chunks, keep):   # refused (a busy store): the same output is offered again next time
            self.sent = {name: buf.total for name, buf in self.buffers.items()}
            self.unsent = False
        self.first = self.last


def tagged_processes(run_id: str) -> list[int]:
    """Pids of live processes whose environment carries this attempt's tag.

    A zombie has no environment any more, so it is never listed (it is dead already).
    """
    needle = TAG + run_id.encode() + b"\0"
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read() + b"\0":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def children() -> list[int]:
    """Pids of this process's children, zombies included."""
    pids = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as fh:
                pids.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return pids


def reap(pids) -> None:
    """Collect those of ``pids`` that are our exited children; never waits, never touches other children.

    (A blanket ``waitpid(-1)`` would steal the exit status of a command that subprocess
    still waits for, or of a pool's worker.)
    """
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except OSError:
            pass


def _pgid(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def kill_run(run_id: str, grace: float, spare: Optional[int] = None, termed_group: Optional[int] = None,
             pause=None, adopted: bool = False) -> int:
    """SIGTERM every process of the attempt, SIGKILL what is left after ``grace``; return how many.

    Processes are found by the attempt's environment tag, again and again until none is
    left, so children forked meanwhile, ``setsid`` children and double forks are caught.
    ``spare`` is a child that its owner reaps itself (the command's leader, which
    subprocess waits for); ``termed_group`` got SIGTERM through its group already;
    ``pause(seconds)`` replaces sleeping (the worker keeps reading the command's output).
    ``adopted``: the caller is the worker that ran the attempt, so every live child of it
    other than ``spare`` belongs to the attempt too (the worker is a subreaper and starts
    nothing else). That catches a process whose environment cannot be read for the instant
    it spends in exec.
    """
    pause = pause or time.sleep
    victims: set[int] = set()
    deadline = time.monotonic() + grace
    give_up = deadline + 10.0          # a process stuck in the kernel cannot be helped
    while True:
        pids = tagged_processes(run_id)
        if adopted:
            pids = sorted(set(pids) | {pid for pid in children() if pid != spare and not _zombie(pid)})
        if not pids:
            break
        now = time.monotonic()
        hard = now >= deadline
        for pid in pids:
            if hard or pid not in victims:
                if hard or termed_group is None or _pgid(pid) != termed_group:
                    try:
                        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
                    except OSError:
                        pass
            victims.add(pid)
        if now >= give_up:
            break
        pause(0.02 if hard else max(0.005, min(0.05, deadline - now)))
        reap(victims - {spare})
    reap(victims - {spare})
    return len(victims)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def has_leftovers(pgid: int) -> bool:
    """Cheap check after the command's leader exited and was reaped: does its group, or an orphan
    reparented to us, live on?

    In a subreaper (a worker) the children alone tell: the command has a session of its own, so every
    member of its group descends from the leader, and the topmost living ones were reparented to us.
    Elsewhere the group is probed too (signal 0): a group id can be reused once its members are gone,
    so a group is never signalled on the strength of its id alone.
    """
    if not is_subreaper():
        try:
            os.killpg(pgid, 0)
            return True
        except OSError:
            pass
    return has_children()


def has_children() -> bool:
    """Does this process have a child, live or exited? One system call; nothing is reaped."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


class ShellRun:
    def __init__(self, proc: subprocess.Popen, run_id: str, cap: int, live_sink=None):
        self.proc = proc
        self.pid = self.pgid = proc.pid
        self.run_id = run_id
        self.buffers = {}
        # poll, not a selectors object: no descriptor of its own to open and close per attempt, and a
        # tenth of the Python work per call (one attempt of `true` looks a few times)
        self.poller = select.poll()
        self.watched: set[int] = set()
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self.buffers[stream.fileno()] = CappedBuffer(cap)
            self._watch(stream.fileno())
        self.out_fd, self.err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        self.live = None if live_sink is None else LiveOutput(
            live_sink, {"stdout": self.buffers[self.out_fd], "stderr": self.buffers[self.err_fd]})
        self.pidfd: Optional[int] = None
        try:
            self.pidfd = os.pidfd_open(proc.pid)
            self._watch(self.pidfd)
        except (AttributeError, OSError):
            pass

    def _pump(self, timeout: float) -> None:
        due = self.live.due_in() if self.live is not None else None
        if due is not None:
            timeout = min(timeout, due)
        self._read_ready(timeout)
        if self.live is not None:
            self.live.flush()

    def _watch(self, fd: int) -> None:
        self.poller.register(fd, select.POLLIN)
        self.watched.add(fd)

    def _read_ready(self, timeout: float) -> None:
        # (poll takes milliseconds, rounded up; a pipe at its end says POLLHUP, and reads b"")
        for fd, _ in self.poller.poll(max(0.0, timeout) * 1000.0):
            if fd == self.pidfd:
                self.proc.wait()
                self._forget(fd)
                continue
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            if data:
                self.buffers[fd].write(data)
                if self.live is not None:
                    self.live.arrived()
            else:
                self._forget(fd)

    def _forget(self, fd: int) -> None:
        self.poller.unregister(fd)
        self.watched.discard(fd)
        if fd == self.pidfd:
            os.close(fd)
            self.pidfd = None

    def _pipes_open(self) -> bool:
        return any(fd in self.buffers for fd in self.watched)

    def wait(self, timeout: float) -> Optional[ExecResult]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(remaining if self.pidfd is not None else min(remaining, 0.02))
        return self._collect()

    def _pause(self, seconds: float) -> None:
        """Sleep while reading output and collecting the leader's exit."""
        until = time.monotonic() + seconds
        while True:
            self.proc.poll()
            left = until - time.monotonic()
            if left <= 0:
                return
            self._pump(left if self.pidfd is not None else min(left, 0.02))

    def _collect(self, outcome: Optional[str] = None, error: Optional[str] = None) -> ExecResult:
        drain_until = time.monotonic() + EXIT_DRAIN
        while self._pipes_open() and time.monotonic() < drain_until:
            self._pump(drain_until - time.monotonic())
        if self._pipes_open() or has_leftovers(self.pgid):
            # nothing of an attempt outlives it
            kill_run(self.run_id, 0, spare=self.pid, pause=self._pause, adopted=True)
            give_up = time.monotonic() + 2.0
            while self._pipes_open() and time.monotonic() < give_up:
                self._pump(0.1)
            # Orphans reparented to us (the worker is a subreaper) that exited. Only here: with no
            # leftovers the worker has no child at all, so no descendant either, and none can appear.
            if has_children():
                reap(children())
        if self.live is not None:
            self.live.flush(force=True)   # a follower sees all of it before the attempt is recorded
        self.proc.stdout.close()
        self.proc.stderr.close()
        if self.pidfd is not None:
            self._forget(self.pidfd)
        return self._result(outcome, error)

    def _result(self, outcome: Optional[str], error: Optional[str]) -> ExecResult:
        code = self.proc.returncode
        out, err = self.buffers[self.out_fd].value(), self.buffers[self.err_fd].value()
        if code is not None and code < 0:
            sig = -code
            return ExecResult(outcome or EXITED, signal=sig, error=error or f"killed by {signal.Signals(sig).name}",
                              stdout=out, stderr=err)
        if outcome is None:
            outcome = SUCCEEDED if code == 0 else EXITED
        if error is None and code:
            error = f"exit code {code}" + (" (command not found)" if code == 127 else "")
        return ExecResult(outcome, exit_code=code, error=error, stdout=out, stderr=err)

    def stop(self, grace: float, outcome: str, reason: str) -> ExecResult:
        """SIGTERM the whole run (its group and every tagged process), SIGKILL what is left after ``grace``."""
        termed = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)   # safe: the leader is our unreaped child, the group ours
                termed = self.pgid
            except OSError:
                pass
        kill_run(self.run_id, grace, spare=self.pid, termed_group=termed, pause=self._pause, adopted=True)
        while self.proc.poll() is None:               # a leader that shed the tag (exec with a clean env)
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except OSError:
                pass
            self._pump(0.05)
        return self._collect(outcome, reason)


class ProcessExecutor:
    """Runs ``argv(job, ctx)`` as an attempt with every guarantee of a shell job: its own session,
    the ``QUEUECTL_RUN_ID`` tag, output captured within ``output-cap``, timeout and cancel stopping
    the whole process tree, nothing of it outliving the attempt, a crash recorded as a signal.

    Part of the plugin surface (docs/hooks.md): an executor plugin subclasses it and defines
    ``argv``, so it reuses this process machinery instead of copying it.
    """

    def argv(self, job, ctx) -> list:
        raise NotImplementedError

    def start(self, job, ctx) -> ShellRun:
        env = environment()
        for extra in (job.env, ctx.env):
            for key, value in extra.items():
                env[os.fsencode(key)] = os.fsencode(value)
        proc = spawn(self.argv(job, ctx), env, job.cwd)
        return ShellRun(proc, ctx.run_id, ctx.config.get("output-cap"), getattr(ctx, "output", None))

    def reap(self, job, lease) -> int:
        if not lease.run_id:
            return 0
        struck = kill_group_first(lease.pgid, lease.run_id)
        return max(struck, kill_run(lease.run_id, 0))


class ShellExecutor(ProcessExecutor):
    """Runs ``/bin/sh -c COMMAND`` (or a job's argv, without a shell) with stdin from /dev/null and output
    captured through pipes."""

    def argv(self, job, ctx) -> list:
        # An argv job (`enqueue -- CMD ARG...`) runs without a shell: its arguments stay literal.
        return list(job.argv) if job.argv else ["/bin/sh", "-c", job.command]


def environment() -> dict:
    """A copy of the worker's environment as it is now, in bytes: what os.environ keeps on POSIX, and what
    posix_spawn passes on as it is (a str copy is decoded here and encoded again there, variable by
    variable: a quarter of the start's own cost). A job's variables are added encoded the same way."""
    return dict(os.environ._data)


def kill_group_first(pgid: Optional[int], run_id: str) -> int:
    """SIGKILL the attempt's process group at once, before the slower sweep by tag; 1 if it was struck.

    Only while the group's leader still lives and carries the attempt's tag: the living leader
    pins the group id, so it cannot belong to anyone else. This stops every non-escaped process
    of the command in one system call, within microseconds of its worker's death.
    """
    if not pgid:
        return 0
    try:
        with open(f"/proc/{pgid}/environ", "rb") as fh:
            if TAG + run_id.encode() + b"\0" not in fh.read() + b"\0":
                return 0
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        return 0
    return 1


# --- starting a command ---------------------------------------------------------------------------
# subprocess.Popen spends about 200 us of the worker's CPU per start, three times what posix_spawn
# (a vfork-like clone in glibc) does with the same effect: its own session, stdin from /dev/null,
# stdout and stderr into pipes, SIGPIPE and SIGXFSZ back to their defaults (Popen's restore_signals),
# no descriptor of the worker left open in the command (Popen's close_fds: every descriptor Python
# opens is close-on-exec already; a stray inheritable one is made close-on-exec in the worker, or
# where that cannot be, closed in the child), the command looked up on the job's own PATH.

_SIGDEF = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))
_devnull: tuple[int, int] = (-1, -1)      # (pid, descriptor): reopened in a forked child


def _stdin() -> int:
    global _devnull
    if _devnull[0] != os.getpid():
        _devnull = (os.getpid(), os.open(os.devnull, os.O_RDONLY))
    return _devnull[1]


SYS_CLOSE_RANGE, CLOSE_RANGE_CLOEXEC = 436, 4      # the same number on every Linux architecture
_close_range = None                                # the syscall function; False where it cannot be used


def _all_cloexec() -> bool:
    """Mark every descriptor above 2 close-on-exec in one system call (Linux 5.11's close_range with
    CLOSE_RANGE_CLOEXEC): a stray inheritable one is then closed by the exec itself, and a start
    needs no listing of /proc/self/fd (a tenth of a start's cost). False where the kernel, a seccomp
    filter or the platform refuses it; the caller lists and closes the strays instead."""
    global _close_range
    if _close_range is None:
        _close_range = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                call = ctypes.CDLL(None, use_errno=True).syscall
                call.restype = ctypes.c_long
                call.argtypes = (ctypes.c_long, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint)
            except (ImportError, OSError, AttributeError):
                return False
            if call(SYS_CLOSE_RANGE, 3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) != 0:
                return False
            _close_range = call
            return True
    return bool(_close_range) and _close_range(SYS_CLOSE_RANGE, 3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC) == 0


def _inheritable(keep: tuple) -> list[int]:
    """Descriptors above 2 that would survive exec (opened by a C library without close-on-exec)."""
    stray = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    stray.append(fd)
            except OSError:
                pass          # the descriptor of the listing itself, closed by now
    return stray


def _spawn(argv: list, env: dict, actions: list) -> int:
    """posix_spawn ``argv``, searching the job's PATH like execvpe; raises what Popen would."""
    name = argv[0]
    if os.sep in name:
        return os.posix_spawn(name, argv, env, file_actions=actions, setsid=True, setsigdef=_SIGDEF)
    denied: Optional[OSError] = None
    for folder in os.get_exec_path(env):
        try:
            return os.posix_spawn(os.path.join(folder, name), argv, env, file_actions=actions, setsid=True,
                                  setsigdef=_SIGDEF)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            denied = denied or exc
    if denied is not None:
        raise denied
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


class Spawned:
    """The command's leader, as ShellRun uses a Popen: pid, returncode, poll(), wait(), stdout, stderr."""

    def __init__(self, pid: int, out_fd: int, err_fd: int):
        self.pid = pid
        self.returncode: Optional[int] = None
        self.stdout = io.FileIO(out_fd, "rb")
        self.stderr = io.FileIO(err_fd, "rb")

    def _wait(self, flags: int) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                pid, status = self.pid, 255 << 8     # reaped by someone else: its status is gone
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> Optional[int]:
        return self._wait(os.WNOHANG)

    def wait(self) -> int:
        return self._wait(0)


def spawn(argv: list, env: dict, cwd: Optional[str] = None):
    """Start ``argv`` in its own session with stdin from /dev/null and stdout, stderr through pipes."""
    # posix_spawn cannot change folder: the worker steps into the job's folder for the call and back
    # (through a descriptor of its own, which a renamed folder does not break). Only while it runs no
    # other thread, which could be using a relative path meanwhile; else subprocess does it.
    if cwd is None or threading.active_count() == 1:
        stdin = _stdin()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if min(stdin, out_w, err_w) > 2:          # else a descriptor 0-2 was free (the worker's own closed)
            try:
                actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                           (os.POSIX_SPAWN_DUP2, err_w, 2)]
                if not _all_cloexec():
                    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable((stdin, out_w, err_w))]
                home = None if cwd is None else os.open(".", os.O_RDONLY | os.O_DIRECTORY)   # the worker's folder
                try:
                    if home is not None:
                        os.chdir(cwd)
                    return Spawned(_spawn(argv, env, actions), out_r, err_r)
                finally:
                    if home is not None:
                        os.fchdir(home)
                        os.close(home)
            except BaseException:
                os.close(out_r)
                os.close(err_r)
                raise
            finally:
                os.close(out_w)
                os.close(err_w)
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=env, start_new_session=True)
