"""The floor under the drain figures: the least a durable worker does per job in Python with sqlite3.

Each of N forked workers loops: one write transaction (WAL, synchronous=NORMAL, as queuectl's default)
that records the finished job's exit code and output with its fencing token checked and claims the
next job by an index, then ``posix_spawn`` of ``/bin/sh -c true`` in its own session with stdin from
/dev/null and output through pipes read to the end, then waitpid. It keeps the three guarantees
(a job claimed before it runs, under a token; its result committed before the next one is claimed;
nothing batched) and nothing else: no counters, no hooks, no lease renewal, no watchdog, no live
output, no recovery. Printed next to the spawn ceiling of bench_drain, in the same run, so the gap
between queuectl's ratio and this one is the cost of queuectl's features, not of the guarantees.

    python -m benchmarks.drain_floor [JOBS]
"""
from __future__ import annotations

import os
import select
import sqlite3
import sys
import tempfile
import time

from .bench_drain import spawn_ceiling
from .common import run_forked

SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, command TEXT, state TEXT, priority INT DEFAULT 0,
   run_at REAL, attempts INT DEFAULT 0, lease_owner TEXT, lease_token INT DEFAULT 0, lease_expires REAL,
   exit_code INT, updated_at REAL);
CREATE INDEX jobs_claim ON jobs(priority DESC, run_at, seq) WHERE state = 'pending';
CREATE TABLE attempts (job_id TEXT, attempt INT, exit_code INT, started REAL, finished REAL, stdout BLOB,
   stderr BLOB, PRIMARY KEY (job_id, attempt));
"""


def setup(db: str, jobs: int) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(db + suffix)
        except FileNotFoundError:
            pass
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO jobs (id, command, state, run_at) VALUES (?, 'true', 'pending', ?)",
                     [(os.urandom(8).hex(), now) for _ in range(jobs)])
    conn.execute("COMMIT")
    conn.close()


def worker(db: str, name: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=0")
    devnull = os.open(os.devnull, os.O_RDONLY)
    base = dict(os.environ)
    done = None
    while True:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:
                time.sleep(0.0001)
        now = time.time()
        if done:
            job_id, token, code, started, out, err = done
            conn.execute("UPDATE jobs SET state = 'completed', exit_code = ?, lease_owner = NULL, lease_expires = NULL, "
                         "updated_at = ? WHERE id = ? AND lease_token = ?", (code, now, job_id, token))
            conn.execute("INSERT INTO attempts VALUES (?, 1, ?, ?, ?, ?, ?)", (job_id, code, started, now, out, err))
        row = conn.execute("SELECT seq FROM jobs INDEXED BY jobs_claim WHERE state = 'pending' AND run_at <= ? "
                           "ORDER BY priority DESC, run_at, seq LIMIT 1", (now,)).fetchone()
        if row:
            conn.execute("UPDATE jobs SET state = 'processing', attempts = attempts + 1, lease_owner = ?, "
                         "lease_token = lease_token + 1, lease_expires = ? WHERE seq = ?", (name, now + 30, row[0]))
            job = conn.execute("SELECT id, command, lease_token FROM jobs WHERE seq = ?", row).fetchone()
        conn.execute("COMMIT")
        if not row:
            return
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        env = dict(base)
        env.update({"QUEUECTL_JOB_ID": job[0], "QUEUECTL_ATTEMPT": "1", "QUEUECTL_RUN_ID": "0" * 32})
        started = time.time()
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", job[1]], env, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                                           (os.POSIX_SPAWN_DUP2, err_w, 2)])
        os.close(out_w)
        os.close(err_w)
        chunks = {out_r: [], err_r: []}
        poller = select.poll()
        poller.register(out_r, select.POLLIN)
        poller.register(err_r, select.POLLIN)
        open_pipes = 2
        while open_pipes:
            for fd, _ in poller.poll():
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_pipes -= 1
        _, status = os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
        done = (job[0], job[2], os.waitstatus_to_exitcode(status), started, b"".join(chunks[out_r]),
                b"".join(chunks[err_r]))


def drain(db: str, workers: int, jobs: int) -> float:
    setup(db, jobs)
    start = time.perf_counter()
    failed = run_forked(workers, lambda i: worker(db, f"w{i}"))
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{failed} floor worker(s) failed")
    conn = sqlite3.connect(db)
    completed = conn.execute("SELECT count(*) FROM jobs WHERE state = 'completed'").fetchone()[0]
    conn.close()
    if completed != jobs:
        raise RuntimeError(f"the floor worker completed {completed} of {jobs} jobs")
    return jobs / elapsed


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with tempfile.TemporaryDirectory(prefix="drain-floor.") as folder:
        db = os.path.join(folder, "floor.db")
        for workers in (1, 2):
            ceiling = floor = 0.0
            for _ in range(3):          # interleaved; the best of each counts, as in bench_drain
                ceiling = max(ceiling, spawn_ceiling(workers, jobs))
                floor = max(floor, drain(db, workers, jobs))
            print(f"{workers} worker(s): ceiling {ceiling:.0f} jobs/s, floor worker {floor:.0f} jobs/s, "
                  f"ratio {floor / ceiling:.2f}")


if __name__ == "__main__":
    main()
