"""Where the spool folder is, what in it is a drop, and the spool's section of `status`.

Kept apart from spool.py (which imports it): `status` shows two counts of the folder without
importing the watcher, the claim and the job file parser.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from queuectl import hookimpl
from queuectl.config import posix_path

if TYPE_CHECKING:
    from pathlib import Path      # built on use only: `status` counts the folder without it

IGNORED_NAMES = {"readme", "readme.md", "readme.txt"}


@hookimpl
def queuectl_status_info(queue):
    folder = configured_folder_name(queue)
    if folder is None:
        return None
    return {"spool": {"folder": folder, "waiting": count_waiting(folder),
                      "rejected": count_files(os.path.join(folder, "rejected"), lambda n: not n.endswith(".error"))}}


def count_files(folder, keep=lambda name: True) -> int:
    try:
        return sum(1 for entry in os.scandir(folder) if keep(entry.name) and not entry.is_dir(follow_symlinks=False))
    except OSError:
        return 0


def count_waiting(folder) -> int:
    return count_files(folder, lambda name: not ignored(name)) + count_files(os.path.join(folder, "work"))


def configured_folder(queue) -> Optional[Path]:
    from pathlib import Path

    name = configured_folder_name(queue)
    return None if name is None else Path(name)


def configured_folder_name(queue) -> Optional[str]:
    """The spool setting, else spool/ beside config.yaml when that folder exists (creating it
    unasked would start a spool in every folder that has a config.yaml)."""
    value = queue.config.get("spool")
    if value:
        return posix_path(value)
    if queue.config.file is not None and os.path.isdir(os.path.join(queue.config.base_folder, "spool")):
        return posix_path(os.path.join(queue.config.base_folder, "spool"))
    return None


def ignored(name: str) -> bool:
    """Not a drop: files still being written under the Maildir contract (dotfiles, *.tmp), editor
    swap and backup files, and the README that marks the folder in a checkout."""
    return (name.startswith((".", "#")) or name.endswith(("~", ".tmp", ".swp", ".swx"))
            or name.lower() in IGNORED_NAMES)
