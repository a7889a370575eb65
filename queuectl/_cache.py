"""Start-up caches: what a command would otherwise recompute on every run.

Three things are cached in ``$XDG_CACHE_HOME/queuectl`` (else ``~/.cache/queuectl``): the
scan of installed entry points, the parsed config.yaml and what the built-in plugins register
(see _lazy.py). Each entry stores the exact
fingerprint of what it was computed from (stat results: mtime and ctime in ns, size,
inode, device) and is used only when the fingerprint is unchanged, so an edited file,
an installed or removed distribution or a new plugin is always seen. Nothing is cached
while its sources changed less than :data:`SETTLE` seconds ago, since two writes within
one timestamp tick could otherwise look alike. Third-party plugins are never cached:
every one is imported and registered on every run.

Any problem with the cache (unreadable, corrupt, not ours, a full disk) makes it a
miss; ``QUEUECTL_NO_CACHE=1`` turns every cache off.

An entry is written with :mod:`marshal` (built into the interpreter: reading one costs neither
an import of json nor a parse of text), and holds only plain data (see :func:`plain_json`). An
entry is read only from a file this user owns and no one else can write, in a folder the same
holds for: what the plugins folder is trusted with too. Another Python version is a miss.
"""
from __future__ import annotations

import marshal
import os
import stat
import sys
import time
from typing import Any, Optional

VERSION = 2
SETTLE = 2.0          # seconds a source must be unchanged before its result is cached
MAX_FILES = 64        # per kind; the least recently written beyond this are removed


def enabled() -> bool:
    return os.environ.get("QUEUECTL_NO_CACHE") != "1"


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "queuectl")


def _ours(info: os.stat_result) -> bool:
    """Only trust what this user owns and no one else can write."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def fingerprint(path: str) -> Optional[list]:
    """What identifies one version of a file or folder, or None when it is missing."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino, info.st_dev]


def settled(prints: list, now: Optional[float] = None) -> bool:
    """True when none of the fingerprinted sources changed within the last SETTLE seconds."""
    limit = ((now or time.time()) - SETTLE) * 1e9
    return all(p is None or (p[0] < limit and p[1] < limit) for p in prints)


def _file(kind: str, name: str) -> str:
    # The name's bytes as one number, modulo the largest 64-bit prime: a hash computed in C (a loop
    # over the bytes in Python cost 50 us per entry). The entry repeats the name: a clash is a miss.
    digest = int.from_bytes(name.encode("utf-8", "surrogateescape"), "big") % 0xffffffffffffffc5
    return os.path.join(cache_dir(), f"{kind}-{digest:016x}{SUFFIX}")


SUFFIX = ".cache"
#: What an entry starts with: this format, and the interpreter (marshal's format is its own).
HEADER = (VERSION, marshal.version, sys.version)


def load(kind: str, name: str, key: Any) -> Optional[Any]:
    """The cached value for ``name`` if it was stored under exactly ``key``, else None."""
    if not enabled():
        return None
    path = _file(kind, name)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not _ours(os.fstat(fd)) or not _ours(os.stat(os.path.dirname(path))):
            return None
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            entry = marshal.loads(fh.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    if type(entry) is not tuple or len(entry) != 4 or entry[0] != HEADER or entry[1] != name or entry[2] != key:
        return None
    return entry[3]


def store(kind: str, name: str, key: Any, value: Any) -> None:
    """Write an entry atomically (temp file + rename); failures are ignored."""
    if not enabled():
        return
    folder = cache_dir()
    tmp = None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _ours(os.stat(folder)):
            return
        if not plain_json(key) or not plain_json(value):
            return
        data = marshal.dumps((HEADER, name, key, value))
        path = _file(kind, name)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        tmp = None
        _prune(folder, kind)
    except (OSError, ValueError):
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _prune(folder: str, kind: str) -> None:
    entries = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.startswith(kind + "-") and entry.name.endswith(SUFFIX):
                try:
                    entries.append((entry.stat().st_mtime_ns, entry.path))
                except OSError:
                    pass
    if len(entries) > MAX_FILES:
        for _mtime, path in sorted(entries)[: len(entries) - MAX_FILES]:
            try:
                os.unlink(path)
            except OSError:
                pass


def plain_json(value: Any) -> bool:
    """True when ``value`` is plain JSON data (None, str, bool, int, finite float, list, dict of str keys),
    which a cache entry holds exactly (marshal keeps each type as it is)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(plain_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(v) for k, v in value.items())
    return False
