"""The notify plugin's outbox: one file per delivery in a folder, and the plugin's section of `status`.

Kept apart from notify.py (which imports it): `status` counts the outbox's files without
importing the notifiers and the deliverer.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Optional

from queuectl import hookimpl
from queuectl.config import data_folder, posix_path
from queuectl._lazy import LazyImport

json = LazyImport("json", globals())
if TYPE_CHECKING:
    from pathlib import Path    # built on use only: `status` reads the outbox without it

CALLBACKS = {"completed": "on-complete", "retry": "on-retry", "dead": "on-dead"}


def outbox_folder(queue) -> Path:
    from pathlib import Path

    return Path(outbox_folder_name(queue))


def outbox_folder_name(queue) -> str:
    """``notify-outbox``, else ``.NAME.notify/`` beside a SQLite store, else a folder per database URL."""
    configured = queue.config.get("notify-outbox")
    if configured:
        return posix_path(configured)
    db = queue.db
    if "://" not in db:
        folder, name = os.path.split(posix_path(db))
        return posix_path(os.path.join(folder, f".{name}.notify"))
    import hashlib

    try:
        schema = queue.config.get("pg-schema")
    except Exception:
        schema = None
    key = hashlib.sha256(f"{db}\0{schema}".encode()).hexdigest()[:16]
    return posix_path(os.path.join(data_folder(), f"notify-{key}"))


class Outbox:
    """A folder of deliveries, one JSON file each: ``NANOS-EVENTID.CHANNEL.json``, given up ones in failed/."""

    def __init__(self, folder: Path):
        from pathlib import Path

        self.folder = Path(folder)
        self.failed = self.folder / "failed"

    def ensure(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.failed.mkdir(mode=0o700, exist_ok=True)

    def put(self, channel: str, event: dict) -> Path:
        self.ensure()
        path = self.folder / f"{time.time_ns():020d}-{event['id']}.{channel}.json"
        self.write(path, {"channel": channel, "tries": 0, "next_at": 0.0, "last_error": None, "event": event})
        return path

    def write(self, path: Path, delivery: dict) -> None:
        """Whole or not at all: written beside, then renamed into place."""
        temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with open(temp, "w") as fh:
            json.dump(delivery, fh)
        os.replace(temp, path)

    def pending(self) -> list:
        return self._list(self.folder)

    def given_up(self) -> list:
        return self._list(self.failed)

    def _list(self, folder: Path) -> list:
        return sorted(folder / n for n in _deliveries(folder))

    def read(self, path: Path) -> Optional[dict]:
        """The delivery, or None when it is gone (delivered by another process) or unreadable."""
        try:
            with open(path) as fh:
                delivery = json.load(fh)
            return delivery if isinstance(delivery, dict) and isinstance(delivery.get("event"), dict) else None
        except (OSError, ValueError):
            return None

    # The wake-up is a datagram to an abstract Unix socket named after the folder: no path length
    # limit, nothing left on disk; a lost datagram only costs the one-second poll.
    def address(self) -> str:
        import hashlib

        return "\0queuectl-notify-" + hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:24]

    def wake(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                sock.sendto(b"!", self.address())
            except OSError:
                pass              # no deliverer listening, or it is awake already


def _deliveries(folder) -> list:
    """The names of the deliveries in ``folder`` (none when it does not exist)."""
    try:
        return [n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")]
    except FileNotFoundError:
        return []


@hookimpl
def queuectl_status_info(queue):
    folder = outbox_folder_name(queue)
    pending, failed = len(_deliveries(folder)), len(_deliveries(os.path.join(folder, "failed")))
    configured = queue.config.get("webhook-url") or any(queue.config.get(k) for k in CALLBACKS.values())
    if not (configured or pending or failed):
        return None
    return {"notify": {"outbox": folder, "pending": pending, "failed": failed}}
