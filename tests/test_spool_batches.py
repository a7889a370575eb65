"""The spool stores several files per transaction: a bad file still ends alone in rejected/, and a
watcher killed in the middle of a large drop leaves nothing lost and nothing twice. Both backends.
"""
from __future__ import annotations

import collections
import os
import signal
from pathlib import Path

from conftest import wait_until
from test_spool import CRASH_EXIT, filed, reason, start_watch, wait_filed

BOTH_BACKENDS = True


def spool_folder(instance, settle: float = 0.3) -> Path:
    instance.write_config(dict(instance.config, **{"spool": "spool", "spool-settle": settle, "spool-rescan": 0.5}))
    folder = instance.root / "spool"
    folder.mkdir(mode=0o700)
    return folder


def drop_at_once(folder: Path, files: dict) -> None:
    """Write every file as a dotfile, then rename them all into place in one burst."""
    for name, text in files.items():
        (folder / f".{name}.tmp").write_text(text)
    for name in files:
        os.rename(folder / f".{name}.tmp", folder / name)


def jobs_per_file(instance) -> collections.Counter:
    return collections.Counter(job["source"].removeprefix("spool:") for job in instance.json("list")
                               if job["source"].startswith("spool:"))


def test_bad_files_in_a_batch_are_rejected_alone_and_the_rest_are_stored(instance):
    folder = spool_folder(instance)
    instance.enqueue("echo first", id="taken")
    good = {f"g{n:03}.yaml": f"command: echo {n}\n" for n in range(120)}
    bad = {"bad-yaml.yaml": ('command: "echo\n', "invalid YAML"),                       # refused before the store
           "dup-id.yaml": ("id: taken\ncommand: echo again\n", "already exists"),       # refused by the store
           "no-dep.yaml": ("command: echo x\nafter: [no-such-job]\n", "no-such-job")}   # refused by the store
    drop_at_once(folder, dict(good, **{name: text for name, (text, _) in bad.items()}))

    counts = instance.json("spool", "scan")                  # every file due at once: one batch
    assert (counts["files"], counts["jobs"], counts["rejected"]) == (120, 120, 3)
    assert filed(folder, "done") == sorted(good) and filed(folder, "rejected") == sorted(bad)
    for name, (_, why) in bad.items():
        assert why in reason(folder, name), name
    assert jobs_per_file(instance) == collections.Counter(dict.fromkeys(good, 1))
    assert instance.job("taken")["command"] == "echo first"
    assert os.listdir(folder / "work") == []


def test_watchers_killed_in_the_middle_of_a_large_drop_make_exactly_one_job_per_file(instance):
    # No settle time: every file is complete before a watcher starts, and each watcher's scan sees them
    # all due at once, so its first batch is a full one. With a settle time the first batch is the files
    # seen at least that long before the first look, which a slow scan can make a single file.
    folder = spool_folder(instance, settle=0)
    names = [f"k{n:04}.yaml" for n in range(1500)]
    drop_at_once(folder, {name: f"command: echo {name}\n" for name in names})

    # Killed right after a batch's commit (its files still in work/, with receipts), right after a
    # batch's claim (in work/, no receipts), then by SIGKILL as soon as it has filed something new.
    for crash in ("INSERT", "CLAIM", None):
        before = len(filed(folder, "done"))
        watcher = start_watch(instance, env={f"QUEUECTL_SPOOL_CRASH_AFTER_{crash}": "1"} if crash else None)
        if crash:
            assert watcher.wait(timeout=120) == CRASH_EXIT
            assert len(os.listdir(folder / "work")) > 1         # a batch, not one file, was in flight
            continue
        wait_until(lambda: len(filed(folder, "done")) > before or watcher.poll() is not None, 120, 0.005,
                   "the watcher to file a file")
        os.killpg(watcher.pid, signal.SIGKILL)
        watcher.wait()

    watcher = start_watch(instance)   # resumes what the dead ones left in work/, then the rest
    assert wait_filed(folder, len(names), timeout=180) == names
    assert jobs_per_file(instance) == collections.Counter(dict.fromkeys(names, 1))
    assert os.listdir(folder / "work") == [] and filed(folder, "rejected") == []
    watcher.terminate()
    assert watcher.wait(timeout=30) == 0
