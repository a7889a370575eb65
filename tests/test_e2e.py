"""End to end through real `queuectl worker start` processes."""
import collections
import json
import os
import signal
import sys
import time

from conftest import wait_for_stderr, wait_signal_taken, wait_until


def ledger_lines(path):
    return path.read_text().splitlines() if path.exists() else []


BOTH_BACKENDS = True      # every test here runs on SQLite and on PostgreSQL

def test_two_pools_run_200_jobs_each_exactly_once(instance):
    ledger = instance.root / "ledger.txt"
    instance.checked_cli("init")               # status/list are read commands: they never create the store
    pools = [instance.start_pool(2), instance.start_pool(2)]
    wait_until(lambda: len([w for w in instance.cli_json("status")["workers"] if w["kind"] == "worker"]) == 4,
               message="4 workers registered")
    specs = "\n".join(json.dumps({"command": f'sleep 0.01; echo "$QUEUECTL_JOB_ID $PPID" >> {ledger}'})
                      for _ in range(200))
    ids = instance.run("enqueue", "--file", "-", input=specs).stdout.split()
    wait_until(lambda: instance.cli_json("status")["counts"]["completed"] == 200, timeout=120,
               message="200 jobs completed")
    lines = ledger.read_text().splitlines()
    runs = collections.Counter(line.split()[0] for line in lines)
    assert sorted(runs) == sorted(ids) and set(runs.values()) == {1}
    workers_by_pool = {}
    for w in instance.cli_json("status")["workers"]:
        if w["kind"] == "worker":
            workers_by_pool.setdefault(w["pool_id"], set()).add(w["pid"])
    ran_on = {int(line.split()[1]) for line in lines}
    assert len(workers_by_pool) == 2
    for pool_workers in workers_by_pool.values():
        assert ran_on & pool_workers, "each pool ran some of the jobs"
    for pool in pools:
        pool.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=60) for p in pools] == [0, 0]
    assert instance.cli_json("status")["workers"] == []


def test_failing_job_is_dead_after_max_retries_plus_one_with_growing_gaps(instance):
    instance.checked_cli("config", "set", "backoff-scale", "0.25")  # gaps of 0.5, 1, 2 s with base 2
    # Each attempt keeps the job as it saw it: its run_at is when the retry was due (the claim leaves it).
    seen = instance.root / "seen"
    job_id = instance.enqueue(f'echo try $QUEUECTL_ATTEMPT; "{sys.executable}" -m queuectl show $QUEUECTL_JOB_ID '
                              f'--json > {seen}-$QUEUECTL_ATTEMPT.json; exit 7', max_retries=3)
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=60) == 0
    job = instance.job(job_id)
    assert job["state"] == "dead" and job["attempts"] == 4
    history = job["history"]
    assert [a["exit_code"] for a in history] == [7, 7, 7, 7]
    assert [a["stdout"] for a in history] == [f"try {n}\n" for n in (1, 2, 3, 4)]
    def epoch(text):
        return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + float("0." + text[20:23])

    # From the end of one attempt to when the next was due: the backoff the worker decided. From there
    # to the next attempt's start: the claim, a poll-interval or (on a loaded machine) any longer, so the
    # growth is asserted of the decided backoffs, not of the gaps (a late claim after the 0.5 s backoff
    # could make the first gap longer than the second).
    due = [epoch(json.loads((instance.root / f"seen-{n}.json").read_text())["run_at"]) for n in (2, 3, 4)]
    backoffs = [d - epoch(a["finished_at"]) for d, a in zip(due, history)]
    gaps = [epoch(b["created_at"]) - epoch(a["finished_at"]) for a, b in zip(history, history[1:])]
    assert backoffs[0] >= 0.5 and backoffs[1] >= 1.0 and backoffs[2] >= 2.0, backoffs
    assert backoffs[0] < backoffs[1] < backoffs[2], backoffs
    assert all(gap >= backoff for gap, backoff in zip(gaps, backoffs)), (gaps, backoffs)     # none ran early
    assert [j["id"] for j in instance.json("dlq", "list")] == [job_id]
    assert "gave up after 4 attempt(s)" in job["last_error"]


def test_dlq_retry_gives_a_fresh_budget_and_keeps_history(instance):
    flag = instance.root / "fixed"
    job_id = instance.enqueue(f"test -e {flag}", max_retries=1)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.job(job_id)["state"] == "dead"
    flag.touch()
    assert instance.run("dlq", "retry", job_id).stdout.strip() == f"{job_id} pending"
    job = instance.job(job_id)
    assert job["state"] == "pending" and job["retries_left"] == 1 and len(job["history"]) == 2
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    job = instance.job(job_id)
    assert job["state"] == "completed" and job["attempts"] == 3
    assert [a["outcome"] for a in job["history"]] == ["failed", "failed", "succeeded"]


def test_worker_stop_from_another_process_finishes_the_running_job(instance):
    started, release, log = instance.root / "started", instance.root / "release", instance.root / "pool.log"
    # The first job runs until the pool has seen the stop request, however long the commands take.
    first = instance.enqueue(f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; echo finished")
    with open(log, "w") as stderr:
        pool = instance.start_pool(1, stderr=stderr)
    wait_until(started.exists, message="first job to start")
    second = instance.enqueue("echo never")
    assert "stop requested for 1 pool(s)" in instance.run("worker", "stop").stdout
    wait_until(lambda: "stop requested through the store" in log.read_text(), message="the pool to see the stop")
    release.touch()
    assert pool.wait(timeout=60) == 0
    assert instance.job(first)["state"] == "completed"
    assert instance.job(first)["history"][0]["stdout"] == "finished\n"
    assert instance.job(second)["state"] == "pending"
    assert instance.cli_json("status")["workers"] == []


def test_sigterm_finishes_running_job_second_signal_interrupts(instance):
    started, ticks = instance.root / "started", instance.root / "ticks"
    job_id = instance.enqueue(f"touch {started}; while :; do echo >> {ticks}; sleep 0.05; done", max_retries=0)
    pool = instance.start_pool(1)
    wait_until(started.exists, message="job to start")
    pool.send_signal(signal.SIGTERM)
    wait_for_stderr(pool, "finishing 1 running job(s)")     # the pool took the signal and passed it on,
    [worker] = instance.pool_workers(pool)
    wait_signal_taken([worker], signal.SIGTERM)               # and its worker took it: the next is a second
    ran = len(ledger_lines(ticks))
    wait_until(lambda: len(ledger_lines(ticks)) >= ran + 2, message="the job to go on after the signal")
    assert pool.poll() is None, "the pool waits for the running job"
    pool.send_signal(signal.SIGINT)
    assert pool.wait(timeout=30) == 0
    job = instance.job(job_id)
    assert job["state"] == "failed", "interrupted attempts are retried, even with max_retries 0"
    assert job["history"][0]["outcome"] == "interrupted"
    assert job["retries_left"] == 0, "retries, not runs: the rerun is not a retry, and max_retries is 0"


def test_job_environment_and_working_folder(instance):
    folder = instance.root / "work"
    folder.mkdir()
    job_id = instance.enqueue('echo "$QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT $GREETING $(pwd)"; cat',
                              env={"GREETING": "hi"}, cwd=str(folder))
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    out = instance.job(job_id)["history"][0]["stdout"]
    assert out == f"{job_id} 1 hi {folder}\n"


def test_signal_death_and_missing_command_are_failures(instance):
    killed = instance.enqueue("kill -TERM $$", max_retries=0)
    missing = instance.enqueue("no-such-command-xyz", max_retries=0)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    k = instance.job(killed)["history"][0]
    assert k["exit_code"] is None and k["signal"] == signal.SIGTERM and "SIGTERM" in k["error"]
    m = instance.job(missing)["history"][0]
    assert m["exit_code"] == 127 and "command not found" in m["error"]


def test_config_set_reaches_running_workers(instance):
    instance.checked_cli("init")               # status/list are read commands: they never create the store
    pool = instance.start_pool(1)
    wait_until(lambda: instance.cli_json("status")["workers"], message="pool up")
    instance.run("config", "set", "backoff-scale", "100")

    def retry_delay():
        """A failing job's first retry delay, once the worker uses the new backoff-scale (100 * 2**1)."""
        job = instance.wait_for_state(instance.enqueue("exit 1", max_retries=1), ("failed", "dead"))
        delay = time.mktime(time.strptime(job["run_at"][:19], "%Y-%m-%dT%H:%M:%S")) - \
            time.mktime(time.strptime(job["updated_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        return job["state"] == "failed" and job["attempts"] == 1 and 150 <= delay <= 250

    # A worker re-reads stored settings about every second; a job enqueued before it did may still
    # retry at the old scale (and soon be dead), so ask again until the new one applies.
    wait_until(retry_delay, timeout=60, interval=0.2, message="the new backoff-scale to apply without a restart")
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_data_survives_a_restart(instance):
    done = instance.enqueue("echo kept")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    waiting = instance.enqueue("true")
    instance.run("config", "set", "max-retries", "6")
    before = instance.json("list")
    # A new process, a new connection: everything is read back from the file.
    assert instance.json("list") == before
    assert instance.json("logs", done)[0]["stdout"] == "kept\n"
    assert instance.run("config", "get", "max-retries").stdout.strip() == "6"
    assert instance.job(waiting)["state"] == "pending"
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.job(waiting)["state"] == "completed"


def test_pool_replaces_a_worker_that_dies(instance):
    instance.checked_cli("init")               # status/list are read commands: they never create the store
    pool = instance.start_pool(2)
    workers = wait_until(lambda: [w for w in instance.cli_json("status")["workers"] if w["kind"] == "worker"]
                         if len([w for w in instance.json("status")["workers"] if w["kind"] == "worker"]) == 2
                         else None, message="2 workers")
    os.kill(workers[0]["pid"], signal.SIGKILL)
    wait_until(lambda: {w["pid"] for w in instance.cli_json("status")["workers"] if w["kind"] == "worker"}
               - {workers[0]["pid"]} and len([w for w in instance.json("status")["workers"]
                                              if w["kind"] == "worker" and w["pid"] != workers[0]["pid"]]) == 2,
               message="a replacement worker")
    job_id = instance.enqueue("echo still working")
    instance.wait_for_state(job_id, "completed")
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_burst_waits_for_a_pending_retry(instance):
    job_id = instance.enqueue('test "$QUEUECTL_ATTEMPT" = 3', max_retries=5)
    assert instance.start_pool(2, "--burst").wait(timeout=60) == 0
    job = instance.job(job_id)
    assert job["state"] == "completed" and job["attempts"] == 3


def test_status_forgets_workers_of_a_killed_pool(instance):
    instance.checked_cli("init")               # status/list are read commands: they never create the store
    dead = instance.start_pool(2)
    wait_until(lambda: len([w for w in instance.cli_json("status")["workers"] if w["kind"] == "worker"]) == 2,
               message="2 workers")
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait()
    live = instance.start_pool(1)
    wait_until(lambda: {w["pool_id"] for w in instance.cli_json("status")["workers"] if w["kind"] == "worker"} ==
               {w["id"] for w in instance.json("status")["workers"] if w["kind"] == "pool"}
               and len(instance.json("status")["workers"]) == 2, message="only the live pool and its worker")
    live.send_signal(signal.SIGTERM)
    assert live.wait(timeout=30) == 0
