"""Where the spool folder is, what in it is a drop, and the spool's section of `status`.

Kept apart from spool.py (which imports it): `status` shows two counts of the folder without
importing the watcher, the claim and the job file parser.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from queuectl import hookimpl

IGNORED_NAMES = {"readme", "readme.md", "readme.txt"}


@hookimpl
def queuectl_status_info(queue):
    folder = configured_folder(queue)
    if folder is None:
        return None
    return {"spool": {"folder": str(folder), "waiting": count_waiting(folder),
                      "rejected": count_files(folder / "rejected", lambda n: not n.endswith(".error"))}}


def count_files(folder: Path, keep=lambda name: True) -> int:
    try:
        return sum(1 for entry in os.scandir(folder) if keep(entry.name) and not entry.is_dir(follow_symlinks=False))
    except OSError:
        return 0


def count_waiting(folder: Path) -> int:
    return count_files(folder, lambda name: not ignored(name)) + count_files(folder / "work")


def configured_folder(queue) -> Optional[Path]:
    """The spool setting, else spool/ beside config.yaml when that folder exists (creating it
    unasked would start a spool in every folder that has a config.yaml)."""
    value = queue.config.get("spool")
    if value:
        return Path(value)
    if queue.config.path is not None and (queue.config.base_dir / "spool").is_dir():
        return queue.config.base_dir / "spool"
    return None


def ignored(name: str) -> bool:
    """Not a drop: files still being written under the Maildir contract (dotfiles, *.tmp), editor
    swap and backup files, and the README that marks the folder in a checkout."""
    return (name.startswith((".", "#")) or name.endswith(("~", ".tmp", ".swp", ".swx"))
            or name.lower() in IGNORED_NAMES)
