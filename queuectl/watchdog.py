"""A worker's watchdog: when the worker dies, however it dies, its running command dies too.

Each worker forks one watchdog when it starts. The watchdog lives in a process group of its
own (a SIGKILL of the pool's whole group does not reach it) and holds the read end of a pipe
whose only writer is the worker. Before each attempt starts, the worker writes the job (with
its lease and run id) into the pipe, and the command's process group once it runs. When the pipe
reaches end-of-file the worker is gone (exit, crash, SIGKILL): the watchdog asks the job's
executor to kill what is left of the last attempt (``reap``, the same call a pool's recovery
makes) and exits. Why not only PR_SET_PDEATHSIG or the subreaper chain: a command that calls
``setsid`` or double-forks is neither the worker's direct child nor, once the worker and the
pool die together, anyone's adopted child but init's; the watchdog outlives both.

The watchdog is forked before the worker becomes a subreaper and detached by a double fork,
so it is not the worker's child (the worker treats its children as parts of the attempt).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import struct
import sys
from typing import Optional

HEADER = struct.Struct("!BI")     # (JOB, length of the pickled job that follows) or (GROUP, pgid)
JOB, GROUP = 1, 2


def start(queue) -> Optional[int]:
    """Fork the watchdog; return the write end of its pipe (None when it could not be started)."""
    try:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        middle = os.fork()
    except OSError:
        return None
    if middle == 0:
        os.close(write_fd)
        _detach(queue, read_fd)
    os.close(read_fd)
    os.waitpid(middle, 0)       # the watchdog is orphaned before the worker becomes a subreaper
    return write_fd


def watch(write_fd: Optional[int], job) -> None:
    """Tell the watchdog which attempt runs now (called before its command starts)."""
    if write_fd is not None:
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        _send(write_fd, HEADER.pack(JOB, len(data)) + data)


def watch_group(write_fd: Optional[int], pgid: int) -> None:
    """Tell the watchdog the process group of the attempt it watches, once the command runs."""
    if write_fd is not None:
        _send(write_fd, HEADER.pack(GROUP, pgid))


def _send(write_fd: int, data: bytes) -> None:
    try:
        os.write(write_fd, data)
    except OSError:
        pass        # the watchdog is gone: the pool's recovery still reaps orphans by their tag


def _detach(queue, read_fd: int) -> None:
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
        _serve(queue, read_fd)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _prompt() -> None:
    """Run at a real-time priority where allowed (root, or RLIMIT_RTPRIO), so that the watchdog runs
    the moment its worker dies, even on a busy machine: a command in its last milliseconds must
    not get to finish. The watchdog sleeps in read() all the time, so it costs nothing meanwhile."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError):
        pass


def _serve(queue, read_fd: int) -> None:
    job = None
    stream = os.fdopen(read_fd, "rb", buffering=0)
    while True:
        header = _read(stream, HEADER.size)
        if header is None:
            break
        kind, value = HEADER.unpack(header)
        if kind == GROUP:
            if job is not None and job.lease is not None:
                job = dataclasses.replace(job, lease=dataclasses.replace(job.lease, pgid=value))
            continue
        body = _read(stream, value)
        if body is None:
            break
        job = pickle.loads(body)
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


def _read(stream, size: int) -> Optional[bytes]:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
