"""Scheduling and control through real workers: priorities, delays, queues, dependencies, unique keys,
cancel, pause, recurring jobs, exit-code policy, retry and purge."""
import json
import re
import signal
import subprocess
import time
from datetime import datetime

import pytest

from conftest import QUEUECTL, alive, wait_until

from queuectl.models import parse_time


BOTH_BACKENDS = True      # every test here runs on SQLite and on PostgreSQL

def iso_to_epoch(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ledger_lines(path):
    return path.read_text().splitlines() if path.exists() else []


def test_priority_orders_then_fifo(instance):
    ledger = instance.root / "order.txt"
    specs = [{"id": f"p{prio}-{n}", "priority": prio, "command": f"echo $QUEUECTL_JOB_ID >> {ledger}"}
             for n in range(3) for prio in (0, 5, -3)]
    instance.run("enqueue", "--file", "-", input="\n".join(json.dumps(s) for s in specs))
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert ledger_lines(ledger) == ["p5-0", "p5-1", "p5-2", "p0-0", "p0-1", "p0-2", "p-3-0", "p-3-1", "p-3-2"]


def test_delayed_job_does_not_start_early_and_is_listed_with_its_time(instance):
    enqueued = time.time()
    job_id = instance.run("enqueue", "--command", "date +%s.%N", "--delay", "2s").stdout.strip()
    header = instance.run("list").stdout.splitlines()[0]
    assert "DUE" in header or time.time() > enqueued + 2       # listed with its time while it waits
    listed = instance.json("list", "--state", "pending")[0]
    assert listed["id"] == job_id and iso_to_epoch(listed["run_at"]) >= enqueued + 1.9
    pool = instance.start_pool(1)
    job = instance.wait_for_state(job_id, "completed", timeout=60)
    started = float(job["history"][0]["stdout"])
    assert started >= enqueued + 2.0
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_run_at_and_burst_does_not_wait_for_later_jobs(instance):
    later = instance.run("enqueue", "--command", "true", "--run-at", "2999-01-01T00:00:00Z").stdout.strip()
    now = instance.enqueue("true")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.job(now)["state"] == "completed"
    assert instance.job(later)["state"] == "pending"
    # PostgreSQL keeps times on the database's clock: a given time moves by the host's offset (milliseconds).
    assert abs(parse_time(instance.job(later)["run_at"]) - parse_time("2999-01-01T00:00:00Z")) < 1.0


def test_queue_limit_of_one_holds_across_two_pools(instance):
    instance.run("queue", "limit", "serial", "1")
    ledger = instance.root / "overlap.txt"
    cmd = f'echo "start $QUEUECTL_JOB_ID $(date +%s.%N)" >> {ledger}; sleep 0.3; echo "end $QUEUECTL_JOB_ID $(date +%s.%N)" >> {ledger}'
    ids = instance.run("enqueue", "--file", "-", input="\n".join(
        json.dumps({"command": cmd, "queue": "serial"}) for _ in range(6))).stdout.split()
    other = instance.enqueue("sleep 0.2")
    pools = [instance.start_pool(2, "--burst"), instance.start_pool(2, "--burst")]
    assert [p.wait(timeout=120) for p in pools] == [0, 0]
    events = sorted((float(t), kind) for kind, _, t in (line.split() for line in ledger_lines(ledger)))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 1 and len(events) == 12
    assert all(instance.job(i)["state"] == "completed" for i in ids + [other])
    queues = {q["name"]: q for q in instance.json("queue", "list")}
    assert queues["serial"]["concurrency"] == 1


def test_worker_serves_only_chosen_queues(instance):
    a = instance.enqueue("true", queue="a")
    b = instance.enqueue("true", queue="b")
    assert instance.start_pool(1, "--burst", "--queue", "a").wait(timeout=60) == 0
    assert instance.job(a)["state"] == "completed"
    assert instance.job(b)["state"] == "pending"
    # `--queue "$Q"` with Q unset, or a stray comma, is refused: never read as "every queue".
    for value in ("", " ", "b,", ",b", "a,,b"):
        proc = instance.run("worker", "start", "--burst", "--queue", value, check=False)
        assert (proc.returncode, proc.stderr) == (2, f"queuectl: error: --queue {value!r}: an empty name in the "
                                                     "list; give names separated by commas\n"), value
    assert instance.job(b)["state"] == "pending"
    assert instance.start_pool(1, "--burst", "--queue", " b , a").wait(timeout=60) == 0
    assert instance.job(b)["state"] == "completed"


def test_pause_and_resume(instance):
    instance.run("queue", "pause", "q")
    started = instance.root / "started"
    held = instance.enqueue(f"touch {started}", queue="q")
    free = instance.enqueue("true")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0, "a paused queue does not keep --burst waiting"
    assert instance.job(free)["state"] == "completed"
    assert instance.job(held)["state"] == "pending" and not started.exists()
    pool = instance.start_pool(1)
    # A job of lower priority in another queue: once it has run, the worker has claimed past `held`.
    after = instance.enqueue("true", priority=-1)
    instance.wait_for_state(after, "completed")
    assert instance.job(held)["state"] == "pending" and not started.exists()
    instance.run("queue", "resume", "q")
    instance.wait_for_state(held, "completed")
    assert started.exists()
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_pause_lets_running_jobs_finish(instance):
    started, release = instance.root / "started", instance.root / "release"
    # The first job runs until the queue is paused, however long the pause command takes.
    first = instance.enqueue(f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done", queue="q")
    second = instance.enqueue("true", queue="q")
    pool = instance.start_pool(1)
    wait_until(started.exists, message="first job running")
    instance.run("queue", "pause", "q")
    release.touch()
    # A job of lower priority in another queue: once it has run, the worker has claimed past `second`.
    after = instance.enqueue("true", priority=-1)
    instance.wait_for_state(first, "completed")
    instance.wait_for_state(after, "completed")
    assert instance.job(second)["state"] == "pending"
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_dependency_chain_runs_in_order(instance):
    ledger = instance.root / "chain.txt"
    a = instance.run("enqueue", "--command", f"sleep 0.3; echo a >> {ledger}", "--id", "a").stdout.strip()
    b = instance.run("enqueue", "--command", f"echo b >> {ledger}", "--after", a, "--id", "b").stdout.strip()
    c = instance.run("enqueue", "--command", f"echo c >> {ledger}", "--after", f"{a},{b}", "--id", "c").stdout.strip()
    assert instance.job(c)["waiting_on"] == 2 and instance.job(c)["after"] == ["a", "b"]
    instance.run("queue", "pause", "held")
    # A fixed id: a generated one starting with "c" would be found by `show c` as a prefix once c is purged.
    d = instance.run("enqueue", "--command", f"echo d >> {ledger}", "--after", "c", "--queue", "held",
                     "--id", "d").stdout.strip()
    assert instance.start_pool(3, "--burst").wait(timeout=60) == 0
    assert ledger_lines(ledger) == ["a", "b", "c"]
    assert instance.job(d)["waiting_on"] == 0
    # A satisfied dependency stays satisfied after the job it named is purged.
    instance.run("purge", "--state", "completed", "--older-than", "0s")
    assert instance.run("show", "c", check=False).returncode == 1
    instance.run("queue", "resume", "held")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.job(d)["state"] == "completed"
    assert ledger_lines(ledger) == ["a", "b", "c", "d"]


def test_dead_dependency_kills_dependents_which_are_retryable(instance):
    instance.run("enqueue", "--command", "exit 1", "--id", "base", "--max-retries", "0")
    instance.run("enqueue", "--command", "true", "--id", "mid", "--after", "base")
    instance.run("enqueue", "--command", "true", "--id", "top", "--after", "mid")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert [instance.job(j)["state"] for j in ("base", "mid", "top")] == ["dead", "dead", "dead"]
    assert instance.job("mid")["last_error"] == "dependency base ended dead"
    assert instance.job("top")["last_error"] == "dependency mid ended dead"
    refused = instance.run("dlq", "retry", "mid", check=False)
    assert refused.returncode == 1 and "waits for 'base', which is dead" in refused.stderr
    late = instance.run("enqueue", "--command", "true", "--after", "base").stdout.strip()
    assert instance.job(late)["state"] == "dead"
    instance.run("dlq", "retry", "base")
    instance.run("dlq", "retry", "mid", "top")
    instance.checked_cli("config", "set", "max-retries", "0")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.job("base")["state"] == "dead"


@pytest.mark.parametrize("args,message", [
    (["--after", "nosuchjob"], "depends on 'nosuchjob', which does not exist"),     # exit 1, like any unknown id
    (["--priority", "-101"], "'--priority': must be an integer from -100 to 100"),
    (["--priority", "high"], "'--priority': must be an integer"),
    (["--delay", "soon"], "not a duration"),
    (["--delay", "-5"], "not a duration"),
    (["--run-at", "tomorrow"], "not an ISO-8601 time"),
    (["--run-at", "2026-12-01T02:00:00"], "has no zone"),
    (["--delay", "5s", "--run-at", "2026-12-01T02:00:00Z"], "either delay or run_at"),
    (["--retry-on", "75,x"], "not an exit code"),
    (["--backoff-base", "0.5"], "must be a number from 1 to 1000"),
    (["--id", "self", "--after", "self"], "cannot depend on itself"),
])
def test_bad_scheduling_values_are_one_clear_error(instance, args, message):
    # status/list are read commands: they never create the store. Set-up and the look afterwards run
    # the CLI in this process; the bad input goes through a real `queuectl` process.
    assert instance.cli("init")[0] == 0
    proc = instance.run("enqueue", "--command", "true", *args, check=False)
    assert proc.returncode == (1 if "nosuchjob" in args else 2) and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert message in proc.stderr
    assert instance.cli_json("list") == []


def test_a_cycle_in_one_batch_is_refused(instance):
    instance.checked_cli("init")               # status/list are read commands: they never create the store
    batch = [{"id": "x", "command": "true", "after": ["y"]}, {"id": "y", "command": "true", "after": ["x"]}]
    proc = instance.run("enqueue", "--file", "-", input=json.dumps(batch), check=False)
    assert proc.returncode == 2 and "dependency cycle: x -> y -> x" in proc.stderr
    assert instance.cli_json("list") == []


def test_unique_keys_under_concurrent_enqueues_from_separate_processes(instance):
    procs = [subprocess.Popen([*QUEUECTL, "enqueue", "--command", "true", "--unique-key", "report"],
                              cwd=instance.root, env=instance.env, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 1 and len(instance.cli_json("list")) == 1
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    fresh = instance.run("enqueue", "--command", "true", "--unique-key", "report").stdout.strip()
    assert fresh not in ids, "a finished job no longer holds its key"
    refused = instance.run("retry", ids.pop(), check=False)
    assert refused.returncode == 1 and "unique key is held by another job" in refused.stderr


def test_cancel_pending_and_running_process_tree(instance):
    pending = instance.enqueue("true", queue="later")
    instance.run("queue", "pause", "later")
    assert instance.run("cancel", pending).stdout.strip() == f"{pending} cancelled"
    pids = instance.root / "pids"
    running = instance.enqueue(f'sleep 300 & echo $! >> {pids}; setsid sleep 300 & echo $! >> {pids}; wait')
    dependent = instance.run("enqueue", "--command", "true", "--after", running).stdout.strip()
    pool = instance.start_pool(1)
    wait_until(lambda: len(ledger_lines(pids)) == 2, message="job tree started")
    assert instance.run("cancel", running).stdout.strip() == f"{running} cancelling"
    job = instance.wait_for_state(running, "cancelled", timeout=30)
    assert job["history"][-1]["outcome"] == "cancelled"
    for pid in map(int, ledger_lines(pids)):
        wait_until(lambda: not alive(pid), timeout=60, message=f"process {pid} gone")
    assert instance.job(dependent)["state"] == "dead"
    assert instance.job(pending)["state"] == "cancelled"
    instance.run("queue", "resume", "later")
    # A job of lower priority behind it in its queue: once it has run, the worker has claimed past it.
    after = instance.enqueue("true", queue="later", priority=-1)
    instance.wait_for_state(after, "completed")
    assert instance.job(pending)["state"] == "cancelled" and instance.job(pending)["attempts"] == 0
    assert instance.run("cancel", pending, check=False).returncode == 1
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_exit_code_policy(instance):
    instance.checked_cli("config", "set", "dead-exit-codes", "64")
    usage = instance.enqueue("exit 64", max_retries=5)
    temp = instance.enqueue('[ "$QUEUECTL_ATTEMPT" -ge 3 ] || exit 75', max_retries=5, retry_on=[75])
    other = instance.enqueue("exit 3", max_retries=5, retry_on=[75])
    bounded = instance.enqueue("exit 75", max_retries=2, retry_on=[75])
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.job(usage)["state"] == "dead" and instance.job(usage)["attempts"] == 1
    assert instance.job(temp)["state"] == "completed" and instance.job(temp)["attempts"] == 3
    assert instance.job(other)["state"] == "dead" and instance.job(other)["attempts"] == 1
    assert instance.job(bounded)["state"] == "dead" and instance.job(bounded)["attempts"] == 3


def test_per_job_backoff_base_and_jitter(instance):
    instance.checked_cli("config", "set", "backoff-scale", "0.1")
    instance.checked_cli("config", "set", "backoff-jitter", "0.5")
    job_id = instance.enqueue("exit 1", max_retries=2, backoff_base=4)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    history = instance.job(job_id)["history"]
    # From the end of one attempt to the start of the next: 0.4 and 1.6 s, +-50%. Never sooner; later
    # only by the worker's claim (a poll-interval, and a loaded machine's delay: 1 s of room).
    gaps = [iso_to_epoch(b["created_at"]) - iso_to_epoch(a["finished_at"]) for a, b in zip(history, history[1:])]
    assert 0.2 <= gaps[0] <= 0.6 + 1.0 and 0.8 <= gaps[1] <= 2.4 + 1.0, gaps


def test_retry_completed_job_and_dlq_retry_all_with_filters(instance):
    done = instance.enqueue("true")
    a = instance.enqueue("exit 3", max_retries=0)
    b = instance.enqueue("exit 4", max_retries=0)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    assert instance.run("retry", done).stdout.strip() == f"{done} pending"
    dry = instance.run("dlq", "retry", "--all", "--exit-code", "4", "--dry-run").stdout
    assert dry.strip() == f"{b} would be retried"
    assert instance.job(b)["state"] == "dead"
    future = instance.run("dlq", "retry", "--all", "--since", "2999-01-01T00:00:00Z", check=False)
    assert future.returncode == 2 and re.fullmatch(r"queuectl: error: --since 2999-01-01T00:00:00Z is in the "
                                                   r"future \(now is [\d:.TZ-]+\)\n", future.stderr), future.stderr
    assert instance.job(a)["state"] == instance.job(b)["state"] == "dead"
    assert instance.run("dlq", "retry", "--all", "--exit-code", "4").stdout.strip() == f"{b} pending"
    assert instance.job(a)["state"] == "dead" and instance.job(b)["state"] == "pending"
    bad = instance.run("dlq", "retry", "--all", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since expects a duration (10m, 2h, 1d) or an ISO-8601 time" in bad.stderr


def backdate(instance, job_id, seconds):
    """Move a job's last update ``seconds`` into the past, in the store itself (no sleeping, no margin)."""
    sql = "UPDATE {jobs} SET updated_at = updated_at - {mark} WHERE id = {mark}"
    if "pg-schema" in instance.config:
        from conftest import pg_execute

        pg_execute(sql.format(jobs=f'"{instance.config["pg-schema"]}".jobs', mark="%s"), (seconds, job_id))
    else:
        import sqlite3

        with sqlite3.connect(instance.root / instance.config["db"]) as conn:
            conn.execute(sql.format(jobs="jobs", mark="?"), (seconds, job_id))
        conn.close()


def test_purge_by_state_and_age(instance):
    old, new = instance.enqueue("true"), instance.enqueue("true")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    backdate(instance, old, 2 * 3600)       # two hours old; `new` finished moments ago
    assert instance.run("purge", "--state", "completed", "--older-than", "1h").stdout.strip() == "purged 1 job(s)"
    assert [j["id"] for j in instance.cli_json("list")] == [new]
    assert instance.cli_json("status")["counts"]["completed"] == 1
    bad = instance.run("purge", "--state", "pending", "--older-than", "1d", check=False)
    assert bad.returncode == 2
    assert old not in instance.run("list").stdout


def test_cron_tick_is_enqueued_once_with_two_pools(instance):
    instance.write_config(dict(instance.config, **{"schedule-interval": 0.05}))
    instance.run("schedule", "add", "every-second", "--cron", "* * * * * *", "--command", "true")
    assert instance.json("schedule", "list")[0]["name"] == "every-second"
    pools = [instance.start_pool(1), instance.start_pool(1)]
    wait_until(lambda: len(instance.cli_json("list")) >= 3, timeout=30, message="three ticks")
    instance.run("schedule", "remove", "every-second")
    for pool in pools:
        pool.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=30) for p in pools] == [0, 0]
    jobs = instance.cli_json("list")
    ticks = [j["id"] for j in jobs]
    assert len(ticks) == len(set(ticks))
    stamps = sorted(j["id"].rsplit("-", 1)[1] for j in jobs)
    assert len(stamps) == len(set(stamps)), "each tick enqueued once"
    assert all(j["source"] == "schedule:every-second" for j in jobs)


def test_missed_ticks_policies(instance):
    instance.write_config(dict(instance.config, **{"schedule-interval": 0.05, "schedule-grace": 0.5}))
    instance.run("schedule", "add", "once", "--cron", "* * * * * *", "--command", "true", "--missed", "once")
    instance.run("schedule", "add", "skip", "--cron", "* * * * * *", "--command", "true", "--missed", "skip")
    time.sleep(3)                               # ticks pass while no pool runs
    pool = instance.start_pool(1)
    wait_until(lambda: any(j["id"].startswith("once-") for j in instance.cli_json("list")), message="catch-up run")
    first = min((j for j in instance.cli_json("list")), key=lambda j: j["created_at"])
    assert first["id"].startswith("once-"), "only 'once' makes up for the missed ticks"
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=30) == 0


def test_schedule_add_validates(instance):
    bad = instance.run("schedule", "add", "x", "--cron", "every day", "--command", "true", check=False)
    assert bad.returncode == 2 and "not a valid cron expression" in bad.stderr
    bad = instance.run("schedule", "add", "x", "--cron", "* * * * *", "--command", "", check=False)
    assert bad.returncode == 2 and "command is empty" in bad.stderr
    instance.run("schedule", "add", "x", "--cron", "0 2 * * *", "--command", "true")
    dup = instance.run("schedule", "add", "x", "--cron", "0 2 * * *", "--command", "true", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    assert instance.json("schedule", "list")[0]["next_run"].endswith("T02:00:00.000Z")
    # A name its ticks' job ids cannot start with is refused as a name, not as the id of a job the
    # user never named ("id 'a b-check' is not valid").
    for name in ("a b", ".x", "über", "x" * 65, "a;b"):
        bad = instance.run("schedule", "add", name, "--cron", "0 2 * * *", "--command", "true", check=False)
        assert (bad.returncode, bad.stderr) == (2, f"queuectl: error: schedule name {name!r} is not valid: use "
                                                   f"1-64 letters, digits and ._:@+- starting with a letter or digit\n")
    assert [s["name"] for s in instance.json("schedule", "list")] == ["x"]


def test_a_fixed_time_fires_once_on_the_night_the_clock_goes_back():
    # Europe/Paris goes from 03:00 CEST back to 02:00 CET on 2026-10-25: 02:30 happens twice. A job
    # at a fixed hour ("30 2 * * *", @daily) runs once that night, as cron runs it; one whose hour is a
    # wildcard ("*/30 * * * *") runs every half hour of real time, the repeated ones too. The night
    # the clock goes forward, 02:30 never happens and the daily job runs at 03:00, once.
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from queuectl.builtin.schedule import next_tick

    paris = ZoneInfo("Europe/Paris")

    def ticks(cron: str, start: str, n: int) -> list[str]:
        at, out = datetime.fromisoformat(start).timestamp(), []
        for _ in range(n):
            at = next_tick(cron, at, paris)
            out.append(datetime.fromtimestamp(at, timezone.utc).strftime("%m-%dT%H:%M"))
        return out

    assert ticks("30 2 * * *", "2026-10-24T12:00:00+00:00", 3) == ["10-25T00:30", "10-26T01:30", "10-27T01:30"]
    assert ticks("0 0,2 * * *", "2026-10-24T12:00:00+00:00", 3) == ["10-24T22:00", "10-25T00:00", "10-25T23:00"]
    assert ticks("*/30 * * * *", "2026-10-25T00:00:00+00:00", 4) == ["10-25T00:30", "10-25T01:00", "10-25T01:30",
                                                                     "10-25T02:00"]
    assert ticks("0 * * * *", "2026-10-24T23:30:00+00:00", 3) == ["10-25T00:00", "10-25T01:00", "10-25T02:00"]
    assert ticks("30 2 * * *", "2026-03-28T12:00:00+00:00", 2) == ["03-29T01:00", "03-30T00:30"]
    assert ticks("@daily", "2026-10-24T12:00:00+00:00", 2) == ["10-24T22:00", "10-25T23:00"]
