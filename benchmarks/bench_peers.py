"""Figure 6: the same workload through huey, RQ and task-spooler, side by side with queuectl.

Workload: N jobs that run ``sh -c true`` with their output captured, two workers.

- queuectl: one bulk enqueue, then ``worker start --count 2 --burst`` until it exits.
- huey (SqliteHuey, ``huey_consumer -k process -w 2``): one enqueue call per task (huey
  has no batch call), then the consumer until every result is stored.
- RQ (Redis at 127.0.0.1:6379): ``Queue.enqueue_many`` in one pipeline, then two
  ``rq worker --burst`` processes. RQ's default worker forks a work horse per job and
  manages tens of jobs/s here, so it gets fewer jobs (500; the rate is what compares);
  ``SimpleWorker`` (no fork) runs the full count.
- task-spooler (``tsp -S 2``): one ``tsp`` call per job while two blocker jobs hold the
  slots, then the drain once they are released, in chunks of 900 (it holds about 1000
  queued jobs at most). Its output goes to files.

Per-call enqueue (one CLI call per job) compares ``queuectl enqueue`` with ``tsp``.
Each ratio is queuectl's rate divided by the peer's: above 1, queuectl is faster.
A peer that is not installed or cannot run is reported and skipped.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from .bench_drain import drain_once
from .common import ROOT, Instance, Results, median, stop_process, wait_for

SECTION = "peers"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _bin(name: str):
    found = Path(sys.executable).with_name(name)
    return str(found) if found.exists() else shutil.which(name)


def _peer_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_HUEY_DB"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _compare(results: Results, peer: str, what: str, ours: float, theirs: float, detail: dict,
             target: Optional[float] = None) -> None:
    ratio = ours / theirs if theirs else None
    results.add(SECTION, f"{what}: queuectl vs {peer}", ours, "jobs/s", reference=theirs, reference_name=peer,
                ratio=ratio, target=f">= {target}x" if target else "",
                met=(ratio is not None and ratio >= target) if target else None, detail=detail)


# --- huey ------------------------------------------------------------------------------------


def run_huey(ctx, jobs: int) -> dict:
    consumer = _bin("huey_consumer")
    if importlib.util.find_spec("huey") is None:
        raise Skip("huey is not installed (pip install 'queuectl[bench]')")
    if consumer is None:
        raise Skip("huey_consumer is not on PATH")
    folder = ctx.tmp / "huey"
    folder.mkdir(exist_ok=True)
    db = folder / "huey.db"
    os.environ["BENCH_HUEY_DB"] = str(db)
    from . import peer_huey

    if peer_huey.huey is None or str(peer_huey.huey.storage.filename) != str(db):
        importlib.reload(peer_huey)         # imported earlier without (or with another) database
    hq = peer_huey.huey
    hq.flush()
    start = time.perf_counter()
    for _ in range(jobs):
        peer_huey.huey_shell("true")
    enqueue_s = time.perf_counter() - start
    env = _peer_env({"BENCH_HUEY_DB": str(db)})
    start = time.perf_counter()
    proc = subprocess.Popen([consumer, "benchmarks.peer_huey.huey", "-k", "process", "-w", "2", "-q"], cwd=folder,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: hq.result_count() >= jobs or proc.poll() is not None, 600, "huey to finish", 0.005)
        drain_s = time.perf_counter() - start
        if proc.poll() is not None:
            raise RuntimeError(f"huey_consumer exited {proc.returncode}: {proc.stderr.read()[-500:]!r}")
    finally:
        stop_process(proc)
        hq.flush()
    return {"enqueue_jobs_per_s": jobs / enqueue_s, "drain_jobs_per_s": jobs / drain_s}


# --- RQ --------------------------------------------------------------------------------------------


def _redis(ctx):
    if importlib.util.find_spec("rq") is None or importlib.util.find_spec("redis") is None:
        raise Skip("rq/redis are not installed (pip install 'queuectl[bench]')")
    from redis import Redis
    conn = Redis.from_url(REDIS_URL)
    try:
        conn.ping()
        return conn, REDIS_URL, None
    except Exception as exc:
        server = shutil.which("redis-server")
        if server is None:
            raise Skip(f"no Redis at {REDIS_URL} ({exc}) and no redis-server to start") from None
    with socket.socket() as s:                       # a private server on a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    conn = Redis.from_url(url)
    wait_for(lambda: _ping(conn), 10, "a private redis-server")
    ctx.results.note(f"RQ: no Redis at {REDIS_URL}; started a private redis-server at {url}")
    return conn, url, proc


def _ping(conn) -> bool:
    try:
        return conn.ping()
    except Exception:
        return False


def run_rq(ctx, jobs: int, worker_class: str = "") -> dict:
    rq_bin = _bin("rq")
    conn, url, server = _redis(ctx)
    if rq_bin is None:
        raise Skip("the rq command is not on PATH")
    from rq import Queue

    from .peer_tasks import run_shell

    name = f"queuectl-bench-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, connection=conn)
    ids = []
    try:
        start = time.perf_counter()
        with conn.pipeline() as pipe:
            enqueued = queue.enqueue_many([Queue.prepare_data(run_shell, args=("true",), result_ttl=600, ttl=600)
                                           for _ in range(jobs)], pipeline=pipe)
            pipe.execute()
        enqueue_s = time.perf_counter() - start
        ids = [job.id for job in enqueued]
        env = _peer_env({})
        start = time.perf_counter()
        extra = ["-w", worker_class] if worker_class else []
        workers = [subprocess.Popen([rq_bin, "worker", "--burst", "-q", *extra, "--url", url, name], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
                   for _ in range(2)]
        errors = []
        for proc in workers:
            if proc.wait(timeout=600) != 0:
                errors.append(proc.stderr.read()[-300:])
        drain_s = time.perf_counter() - start
        finished = queue.finished_job_registry.count
        if errors or finished != jobs:
            raise RuntimeError(f"rq finished {finished} of {jobs} jobs; {errors}")
        return {"enqueue_jobs_per_s": jobs / enqueue_s, "drain_jobs_per_s": jobs / drain_s, "url": url}
    finally:
        with conn.pipeline() as pipe:
            for job_id in ids:
                pipe.delete(f"rq:job:{job_id}", f"rq:results:{job_id}", f"rq:job:{job_id}:dependents")
            pipe.execute()
        keys = list(conn.scan_iter(match=f"rq:*{name}*"))
        if keys:
            conn.delete(*keys)
        conn.srem("rq:queues", f"rq:queue:{name}")
        if server is not None:
            stop_process(server)


# --- task-spooler -------------------------------------------------------------------------------------


def _tsp_binary():
    if shutil.which("tsp"):
        return shutil.which("tsp")
    ts = shutil.which("ts")           # moreutils also has a `ts`: accept only task-spooler's
    if ts:
        try:
            out = subprocess.run([ts, "-V"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=5)
            if "spooler" in (out.stdout + out.stderr).lower():
                return ts
        except (OSError, subprocess.SubprocessError):
            pass
    return None


TSP_CHUNK = 900          # task-spooler holds at most about 1000 queued jobs (TS_MAXCONN)


def run_tsp(ctx, jobs: int, per_call_samples: int) -> dict:
    tsp = _tsp_binary()
    if tsp is None:
        raise Skip("task-spooler is not installed (apt-get install task-spooler)")
    folder = ctx.tmp / "tsp"
    (folder / "out").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TS_SOCKET": str(folder / "ts.socket"), "TMPDIR": str(folder / "out"),
           "TS_MAXFINISHED": str(TSP_CHUNK + 100)}

    def call(*args) -> str:
        return subprocess.run([tsp, *args], env=env, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=True, timeout=60).stdout.strip()
    chunk_no = 0
    try:
        call("-S", "2")
        per_call, enqueue_s, drain_s, done = [], 0.0, 0.0, 0
        while done < jobs:
            # Two blockers hold both slots while a chunk is queued; then the chunk drains.
            chunk_no += 1
            go = folder / f"go-{chunk_no}"
            blockers = [call("sh", "-c", f"while [ ! -e {go} ] && [ -d {folder} ]; do sleep 0.01; done")
                        for _ in range(2)]
            wait_for(lambda: all(call("-s", b) == "running" for b in blockers), 30, "task-spooler blockers")
            size = min(TSP_CHUNK, jobs - done)
            ids = []
            start = time.perf_counter()
            for _ in range(size):
                t = time.perf_counter()
                ids.append(call("sh", "-c", "true"))
                if len(per_call) < per_call_samples:
                    per_call.append(time.perf_counter() - t)
            enqueue_s += time.perf_counter() - start
            go.touch()
            start = time.perf_counter()
            for job_id in blockers + ids[-2:]:
                call("-w", job_id)
            drain_s += time.perf_counter() - start
            states = [line.split()[1] for line in call("-l").splitlines()[1:] if len(line.split()) > 1]
            if any(state != "finished" for state in states):
                raise RuntimeError(f"task-spooler left jobs unfinished: {sorted(set(states))}")
            call("-C")                      # forget the finished ones
            done += size
        return {"enqueue_jobs_per_s": jobs / enqueue_s, "drain_jobs_per_s": jobs / drain_s,
                "per_call_ms": median(per_call) * 1000, "binary": tsp, "chunk": TSP_CHUNK}
    finally:
        for n in range(1, chunk_no + 1):      # release any blocker still waiting, then stop the server
            (folder / f"go-{n}").touch()
        subprocess.run([tsp, "-K"], env=env, capture_output=True, timeout=30)


class Skip(Exception):
    """A peer that cannot run here: reported, never a failure of the suite."""


def run(ctx) -> None:
    results: Results = ctx.results
    jobs = 100 if ctx.smoke else 2000
    per_call_samples = 5 if ctx.smoke else 20
    inst = Instance(ctx.tmp / "peers-queuectl")
    inst.run("init")

    # queuectl on the same workload, in this section: bulk enqueue, drain with 2 workers
    inst.reset_store()
    inst.queue.store  # noqa: B018 - open the queue and its store before timing
    specs = [{"command": "true"} for _ in range(jobs)]
    start = time.perf_counter()
    inst.queue.enqueue_many(specs)
    ours_enqueue = jobs / (time.perf_counter() - start)
    inst.close()
    inst.reset_store()
    ours_drain = max(drain_once(inst, 2, jobs)["jobs_per_s"] for _ in range(1 if ctx.smoke else 2))
    time.sleep(2.1)                      # let the start-up caches take the config (see bench_enqueue)
    inst.run("enqueue", "-c", "true")
    ours_call = median([inst.time_run("enqueue", "-c", "true") for _ in range(per_call_samples)])
    results.add(SECTION, f"queuectl: drain {jobs} x `sh -c true`, 2 workers", ours_drain, "jobs/s")

    rq_forking = 30 if ctx.smoke else 500       # RQ's default worker forks per job: tens of jobs/s here
    peers = (("huey", jobs, lambda: run_huey(ctx, jobs)),
             ("RQ", rq_forking, lambda: run_rq(ctx, rq_forking)),
             ("RQ SimpleWorker", jobs, lambda: run_rq(ctx, jobs, "rq.worker.SimpleWorker")),
             ("task-spooler", jobs, lambda: run_tsp(ctx, jobs, per_call_samples)))
    for peer, count, fn in peers:
        try:
            got = fn()
        except Skip as exc:
            results.note(f"{peer}: skipped: {exc}")
            continue
        except Exception as exc:          # a peer that breaks is reported; the suite goes on
            results.note(f"{peer}: failed: {type(exc).__name__}: {exc}")
            continue
        _compare(results, peer, f"drain {count} jobs, 2 workers", ours_drain, got["drain_jobs_per_s"],
                 dict(got, jobs=count), target=1.2 if peer == "task-spooler" else None)
        if peer == "task-spooler":
            _compare(results, peer, "enqueue, one CLI call per job", 1 / ours_call, 1000 / got["per_call_ms"],
                     {"queuectl_ms": ours_call * 1000, "tsp_ms": got["per_call_ms"]})
        elif peer != "RQ SimpleWorker":        # the same enqueue as RQ's
            how = "enqueue_many vs one call per task" if peer == "huey" else "enqueue_many vs enqueue_many"
            _compare(results, peer, f"enqueue {count} jobs, Python API ({how})", ours_enqueue,
                     got["enqueue_jobs_per_s"], dict(got, jobs=count))
