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


_SUBREAPER: tuple = (0, False)     # (pid, whether that process is a child subreaper): set once, never unset


def is_subreaper() -> bool:
    """Is this process a child subreaper (PR_SET_CHILD_SUBREAPER)? Asked once per process: the setting
    is not inherited across fork, and a process that set it keeps it. (The shell executor's; not part
    of the plugin surface.)"""
    global _SUBREAPER
    pid = os.getpid()
    if _SUBREAPER[0] != pid:
        value = False
        if sys.platform.startswith("linux"):
            import ctypes

            flag = ctypes.c_int(0)
            value = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 \
                and flag.value != 0
        if not value:
            return False           # asked again next time: it may be set later
        _SUBREAPER = (pid, True)
    return _SUBREAPER[1]


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
