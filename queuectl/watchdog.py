"""A worker's watchdog: when the worker dies, however it dies, its running command dies too.

Each worker forks one watchdog when it starts. The watchdog lives in a process group of its
own (a SIGKILL of the pool's whole group does not reach it) and holds the read end of a pipe
whose only writer is the worker. It sleeps in read() for the worker's whole life: when the pipe
reaches end-of-file the worker is gone (exit, crash, SIGKILL), and the watchdog asks the job's
executor to kill what is left of the last attempt (``reap``, the same call a pool's recovery
makes) and exits. Why not only PR_SET_PDEATHSIG or the subreaper chain: a command that calls
``setsid`` or double-forks is neither the worker's direct child nor, once the worker and the
pool die together, anyone's adopted child but init's; the watchdog outlives both.

Which attempt runs is not sent through the pipe (a message would wake the watchdog, which runs
at a real-time priority, twice per job: a fifth of a worker's time on short jobs) but written
into memory the two share (a ``Board``): before each attempt starts, the worker writes the job
with its lease into the slot not in use and then flips the one-byte index to it, so a worker
killed mid-write leaves the previous, whole record; the command's process group is written
into the live slot once the command runs. The watchdog reads the board only once, at the end.

The watchdog is forked before the worker becomes a subreaper and detached by a double fork,
so it is not the worker's child (the worker treats its children as parts of the attempt).
"""
from __future__ import annotations

import dataclasses
import marshal
import mmap
import os
import pickle
import signal
import struct
import sys
from typing import Optional

from .models import Job, Lease

SLOT = 4 << 20                    # bytes per slot: a job is bounded by the exec limit (ARG_MAX, 2 MiB here)
SLOT_HEADER = struct.Struct("=II")  # (length of the encoded job, process group or 0)


class Board:
    """The worker's end: the write end of the pipe, and the shared record of the attempt that runs."""

    def __init__(self, write_fd: int, memory: mmap.mmap):
        self.write_fd = write_fd
        self.memory = memory       # [live slot: 1 byte] [pad to 8] [slot 0] [slot 1]; pages are touched lazily

    def watch(self, job) -> None:
        """Record which attempt runs now (before its command starts)."""
        data = encode(job)
        if len(data) > SLOT - SLOT_HEADER.size:    # (cannot be, for a job the store took; stay safe anyway)
            data = encode(dataclasses.replace(job, command="", env={}, argv=None, labels={}))
        slot = 1 - self.memory[0]
        at = 8 + slot * SLOT
        SLOT_HEADER.pack_into(self.memory, at, len(data), 0)
        self.memory[at + SLOT_HEADER.size:at + SLOT_HEADER.size + len(data)] = data
        self.memory[0] = slot       # one byte: the record is whole before it is live

    def watch_group(self, pgid: int) -> None:
        """Record the process group of the attempt that runs, once its command runs."""
        struct.pack_into("=I", self.memory, 8 + self.memory[0] * SLOT + 4, pgid)

    def close(self) -> None:
        """The worker ends: the watchdog sweeps the last attempt (nothing is left of it by now) and exits."""
        os.close(self.write_fd)


def encode(job) -> bytes:
    """The job with its lease as it is written to the board, once per attempt: its attributes as marshal
    data, which costs a third less than a pickle of the dataclass (the worker pays it before every
    command). A value that marshal cannot write (a plugin's own type in a job's fields) falls back to a
    pickle of the whole job; the first byte says which."""
    state = dict(vars(job))
    if job.lease is not None:
        state["lease"] = vars(job.lease)
    try:
        return b"m" + marshal.dumps(state)
    except ValueError:
        return b"p" + pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes):
    """The job that encode() wrote, rebuilt as a pickle would: the instance and its attributes, no __init__."""
    if data[:1] == b"p":
        return pickle.loads(data[1:])
    state = marshal.loads(data[1:])
    if state.get("lease") is not None:
        lease = Lease.__new__(Lease)
        lease.__dict__.update(state["lease"])
        state["lease"] = lease
    job = Job.__new__(Job)
    job.__dict__.update(state)
    return job


def start(queue) -> Optional[Board]:
    """Fork the watchdog; None when it could not be started."""
    try:
        memory = mmap.mmap(-1, 8 + 2 * SLOT)    # anonymous and shared: the watchdog sees every write
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        middle = os.fork()
    except OSError:
        return None
    if middle == 0:
        os.close(write_fd)
        _detach(queue, read_fd, memory)
    os.close(read_fd)
    os.waitpid(middle, 0)       # the watchdog is orphaned before the worker becomes a subreaper
    return Board(write_fd, memory)


def _last_attempt(memory: mmap.mmap):
    at = 8 + memory[0] * SLOT
    size, pgid = SLOT_HEADER.unpack_from(memory, at)
    if not size:
        return None
    job = decode(memory[at + SLOT_HEADER.size:at + SLOT_HEADER.size + size])
    if pgid and job.lease is not None:
        job = dataclasses.replace(job, lease=dataclasses.replace(job.lease, pgid=pgid))
    return job


def _detach(queue, read_fd: int, memory: mmap.mmap) -> None:
    code = 0
    try:
        if os.fork() != 0:
            os._exit(0)
        os.setpgid(0, 0)                               # out of the pool's process group
        _prompt()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)          # only the worker's end decides
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.closerange(3, read_fd)
        os.closerange(read_fd + 1, 1 << 16)
        _serve(queue, read_fd, memory)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _prompt() -> None:
    """Run at a real-time priority where allowed (root, or RLIMIT_RTPRIO), so that the watchdog runs
    the moment its worker dies, even on a busy machine: a command in its last milliseconds must
    not get to finish. The watchdog sleeps in read() all the time, so it costs nothing meanwhile."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(2))     # above the workers (SCHED_RR 1)
    except (AttributeError, OSError):
        pass


def _serve(queue, read_fd: int, memory: mmap.mmap) -> None:
    while os.read(read_fd, 4096):
        pass                        # (nothing is ever written: end-of-file is the worker's death)
    job = _last_attempt(memory)
    if job is None or job.lease is None:
        return
    try:
        killed = queue.executor(job.executor).reap(job, job.lease)
    except Exception as exc:
        print(f"queuectl: watchdog: could not stop job {job.id}: {exc}", file=sys.stderr, flush=True)
        return
    if killed:
        print(f"queuectl: worker {job.lease.pid} is gone; its watchdog killed {killed} process(es) of job "
              f"{job.id} attempt {job.attempts}", file=sys.stderr, flush=True)

