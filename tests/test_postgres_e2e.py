"""PostgreSQL end to end, through the real CLI: several hosts, LISTEN/NOTIFY wake-ups, a server restart.

Each test uses a private schema (pg-schema), dropped afterwards. The restart needs a local
cluster managed by pg_ctlcluster (Debian's postgresql-common) and root. Outside CI the tests
skip when PostgreSQL is missing; under CI (CI=true) they fail instead.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import IN_CI, PG_URL, Instance, pg_exclusive, pg_execute, require_pg, wait_until

JOBS = 2000
POOLS = 4


def pg_unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"PostgreSQL is required under CI: {reason}")
    pytest.skip(reason)


def local_cluster() -> tuple[str, str]:
    """(version, name) of the pg_ctlcluster cluster that serves PG_URL."""
    url = urlsplit(PG_URL)
    if url.hostname not in (None, "", "127.0.0.1", "localhost", "::1") or shutil.which("pg_lsclusters") is None:
        pg_unavailable(f"restarting PostgreSQL needs a local pg_ctlcluster cluster behind {PG_URL}")
    if os.geteuid() != 0:
        pg_unavailable("restarting PostgreSQL with pg_ctlcluster needs root")
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(url.port or 5432):
            return fields[0], fields[1]
    pg_unavailable(f"no pg_ctlcluster cluster listens on port {url.port or 5432}")


def restart_pg(cluster: tuple[str, str], down_for: float = 0.0) -> float:
    """Restart the server (fast shutdown: sessions are cut off mid-transaction); returns seconds taken.

    With ``down_for``, the server stays stopped that long: clients see refused connections too.
    """
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster]
    with pg_exclusive():                # tests running in parallel must not see the server go away
        started = time.monotonic()
        if down_for:
            subprocess.run([*ctl, "stop"], check=True, capture_output=True, timeout=120)
            time.sleep(down_for)
            subprocess.run([*ctl, "start"], check=True, capture_output=True, timeout=120)
        else:
            subprocess.run([*ctl, "restart"], check=True, capture_output=True, timeout=120)
        wait_until(lambda: _reachable(), 60, 0.1, "PostgreSQL to accept connections again")
        return time.monotonic() - started


def _reachable() -> bool:
    try:
        pg_execute("SELECT 1")
        return True
    except Exception:
        return False


@pytest.fixture
def pg_instance(tmp_path):
    require_pg()
    schema = f"qe_{uuid.uuid4().hex[:12]}"
    inst = Instance(tmp_path, {"db": PG_URL, "pg-schema": schema, "poll-interval": 0.5, "recovery-interval": 0.2,
                               "lease-timeout": 30, "backoff-scale": 0.05, "kill-grace": 1})
    inst.schema = schema
    yield inst
    inst.cleanup()
    try:
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception:
        pass


def stop_pool(pool: subprocess.Popen) -> None:
    os.kill(pool.pid, signal.SIGTERM)
    assert pool.wait(timeout=30) == 0, pool.stderr.read()


def ledger_lines(path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def test_four_hosts_run_every_job_once_across_a_server_restart(pg_instance):
    inst = pg_instance
    cluster = local_cluster()
    ledger = inst.root / "ledger"
    jobs = inst.root / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": f"j{i:04d}", "command": f'echo "$QUEUECTL_JOB_ID" >> {ledger}'}) + "\n"
                            for i in range(JOBS)))
    inst.run("enqueue", "--file", jobs)
    assert inst.json("status")["counts"]["pending"] == JOBS
    pools = [inst.start_pool(2, "--burst", env={"QUEUECTL_HOST_ID": f"host-{k}"}) for k in range(POOLS)]

    wait_until(lambda: len(ledger_lines(ledger)) >= JOBS // 5, 60, 0.01, "a fifth of the jobs to run")
    done_before = len(ledger_lines(ledger))
    took = restart_pg(cluster, down_for=2.0)
    assert done_before < JOBS

    for pool in pools:
        assert pool.wait(timeout=90) == 0, pool.stderr.read()
    lines = ledger_lines(ledger)
    assert len(lines) == JOBS, f"{len(lines) - len(set(lines))} duplicate runs, {JOBS - len(set(lines))} missing"
    assert sorted(lines) == [f"j{i:04d}" for i in range(JOBS)]
    counts = inst.json("status")["counts"]
    assert counts == {"pending": 0, "processing": 0, "completed": JOBS, "failed": 0, "dead": 0,
                      "cancelled": 0}
    s = f'"{inst.schema}"'
    assert pg_execute(f"SELECT count(*), max(attempts) FROM {s}.jobs") == [(JOBS, 1)]
    hosts = dict(pg_execute(f"SELECT host, count(*) FROM {s}.attempts GROUP BY host"))
    assert sorted(hosts) == [f"host-{k}" for k in range(POOLS)] and sum(hosts.values()) == JOBS
    print(f"server down {took:.1f} s from {done_before} of {JOBS} jobs done; runs per host {hosts}")


def idle_in_select(inst, pool: subprocess.Popen) -> bool:
    """Is the pool's worker blocked in select(), where an idle worker waits for a notification or its
    poll? (A query in flight waits in poll(), a command's output too.)"""
    pids = inst.pool_workers(pool)
    try:
        return len(pids) == 1 and int(Path(f"/proc/{pids[0]}/syscall").read_text().split()[0]) in SELECT_SYSCALLS
    except (OSError, ValueError, IndexError):
        return False


SELECT_SYSCALLS = (23, 270)          # select, pselect6 (x86-64: what Python's select.select calls)


def test_idle_worker_wakes_on_notify_not_on_the_poll(pg_instance):
    inst = pg_instance
    # The poll comes only every 10 minutes: a pickup within a tenth of that is the notify. The bound is
    # in the poll's units, not the machine's speed: a loaded machine takes seconds, not minutes.
    poll = 600
    config = dict(inst.config, **{"poll-interval": poll})
    inst.write_config(config)
    cluster = local_cluster()
    pool = inst.start_pool(1)
    first = inst.enqueue("true")
    inst.wait_for_state(first, "completed", timeout=30)
    listening = f"""SELECT count(*) FROM pg_stat_activity WHERE application_name = 'queuectl'
                    AND state = 'idle' AND query = 'LISTEN "queuectl_wake_{inst.schema}"'"""

    from queuectl import Queue

    def pickup_latency(tag: str) -> float:
        # The worker waits in select() (600 s to go) on its LISTEN connection: not in a claim, which
        # would find the job without any notification.
        wait_until(lambda: idle_in_select(inst, pool), 60, 0.01, "the worker to wait idle in select()")
        marker = inst.root / f"started-{tag}"
        with Queue.open(config=str(inst.config_path), env={}) as queue:
            queue.store                                   # connect first: time the enqueue, not the connection
            sent = time.time()
            queue.enqueue(command=f"date +%s.%N > {marker}")
        wait_until(lambda: marker.exists() and marker.read_text().strip(), 2 * poll / 10, 0.01, f"job {tag} to start")
        return float(marker.read_text()) - sent

    latencies = [pickup_latency(f"idle{n}") for n in range(3)]
    assert max(latencies) < poll / 10, latencies

    restart_pg(cluster)                                   # its LISTEN connection is cut: it must listen again
    wait_until(lambda: pg_execute(listening)[0][0] == 1, 60, 0.05, "the worker to LISTEN again")
    after = pickup_latency("after-restart")
    assert after < poll / 10, after
    stop_pool(pool)
    print(f"pickup latencies {[round(x, 3) for x in latencies]} s; after a restart {after:.3f} s")
