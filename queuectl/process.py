"""Process identity, shared by the worker, the spool and plugins: a process is its pid plus its
start time (so a reused pid never matches), and a host is its configured ``host-id``.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

__all__ = ["pid_start_time", "pid_alive", "host_id", "prctl", "PR_SET_PDEATHSIG", "PR_SET_CHILD_SUBREAPER"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, value, 0, 0, 0) == 0


_SUBREAPER_PID = 0     # the process last found to be a child subreaper: the setting is never unset


def is_subreaper() -> bool:
    """Is this process a child subreaper (PR_SET_CHILD_SUBREAPER)? A yes is kept for the process: the
    setting is not inherited across fork, and a process that set it keeps it; a no is asked again, since
    it may be set later. (The shell executor's; not part of the plugin surface.)"""
    global _SUBREAPER_PID
    if _SUBREAPER_PID != os.getpid():
        if not sys.platform.startswith("linux"):
            return False
        import ctypes

        flag = ctypes.c_int(0)
        if ctypes.CDLL(None, use_errno=True).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0 \
                or not flag.value:
            return False
        _SUBREAPER_PID = os.getpid()
    return True


def _proc_stat(pid: int) -> Optional[list]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def pid_start_time(pid: int) -> Optional[int]:
    """The process start time in clock ticks since boot: pid plus this defeats pid reuse."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def pid_alive(pid: Optional[int], start: Optional[int]) -> bool:
    """Is this process (pid and start time) still running? A zombie is not: in a container whose
    init does not collect orphans, a dead worker can stay a zombie for good."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not os.path.isdir("/proc/self")       # no /proc (not Linux): the signal probe decides
    if fields[0] in (b"Z", b"X"):
        return False
    return start is None or int(fields[19]) == start


def host_id(queue) -> str:
    host = queue.config.get("host-id")
    if host:
        return host
    if sys.platform.startswith("linux"):
        return os.uname().nodename      # what gethostname(2) returns on Linux, without importing socket
    import socket

    return socket.gethostname()
