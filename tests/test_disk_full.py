"""Disk full: the store on a real, small filesystem (a tmpfs mounted for the test) fills while a pool drains.

Needs root to mount; skipped with that reason otherwise (and failed under CI=true).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import IN_CI, wait_until


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the disk-full test needs root (to mount a tmpfs) under CI")
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"       # room for the store and its WAL (checkpointed at about 4 MB)
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> None:
    """Fill the filesystem to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_is_waited_out_and_nothing_is_lost_or_run_twice(instance, small_fs):
    ledger, log = instance.root / "ledger", instance.root / "pool.log"
    instance.write_config(dict(instance.config, db=str(small_fs / "queue.db"), **{"lease-timeout": 60}))
    # Each job writes one line outside the small filesystem and 16 KB of output into the store.
    command = f'echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT" >> {ledger}; sleep 0.2; head -c 16384 /dev/zero | tr "\\0" x'
    ids = instance.run("enqueue", "--file", "-", input="\n".join(
        '{"command": %s}' % json.dumps(command) for _ in range(40))).stdout.split()
    with open(log, "w") as err:
        pool = instance.start_pool(2, "--no-spool", stderr=err)
    wait_until(lambda: ledger.exists() and len(ledger.read_text().splitlines()) >= 4, message="jobs to run")
    fill(small_fs)
    wait_until(lambda: "the disk is full" in log.read_text(), timeout=60, message="a worker to meet the full disk")

    single = instance.run("enqueue", "--command", "echo late", check=False)
    assert single.returncode == 1 and single.stderr.count("\n") == 1, single.stderr
    assert single.stderr.startswith("queuectl: error: cannot write the store") and "disk is full" in single.stderr
    batch = instance.run("enqueue", "--file", "-", check=False,
                         input="\n".join('{"command": "echo batch-%d"}' % n for n in range(200)))
    assert batch.returncode == 1 and batch.stderr.count("\n") == 1, batch.stderr
    assert pool.poll() is None, "the pool waits for space instead of exiting"

    os.unlink(small_fs / "filler")
    wait_until(lambda: instance.cli_json("status")["counts"].get("completed", 0) == len(ids), timeout=120,
               interval=0.2, message="every job to complete once space is back")
    jobs = instance.json("list")
    assert len(jobs) == len(ids), "the refused enqueues stored nothing, not even part of a batch"
    assert all(j["state"] == "completed" and j["attempts"] == 1 for j in jobs), "nothing ran twice"
    runs = ledger.read_text().splitlines()
    assert sorted(runs) == sorted(f"{i} 1" for i in ids), "each command ran exactly once"
    assert all(len(instance.json("logs", i)[0]["stdout"]) == 16384 for i in ids[:3])
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=60) == 0
    text = log.read_text()
    assert "Traceback" not in text, text
    full_lines = [line for line in text.splitlines() if "disk is full" in line]
    assert 1 <= len(full_lines) <= 3, text      # one line per process that had to wait (pool, 2 workers)
