"""The odd cases of watching jobs run: odd output, a worker killed mid-stream, ids that are prefixes,
unknown or purged, nothing to wait for, `top` off a terminal, tiny and resized.

Each ends with one clear line and a sensible exit code, never a traceback or a hang. Real workers,
real output, real signals, a real terminal (a pty; tmux for `top`); both backends.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from conftest import QUEUECTL, wait_until
from test_live_output import BLOCK, exit_status, follow, read_until, spawn_pty, tmux, wait_on_a_terminal

BOTH_BACKENDS = True


def worker_running(instance, job_id: str) -> int:
    """The pid of the worker that runs ``job_id``."""
    return wait_until(lambda: next((w["pid"] for w in instance.cli_json("status")["workers"]
                                    if w["kind"] == "worker" and w.get("job_id") == job_id), None),
                      message=f"a worker to run {job_id}")


def no_traceback(text) -> None:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    assert "Traceback" not in text, text


# --- ids: prefixes, unknown, ambiguous, purged ----------------------------------------------------


def test_follow_and_wait_take_a_prefix_of_the_id(instance):
    job_id = instance.enqueue(f"echo one; {BLOCK.format(name='release')}; echo two", id="prefixjob-1")
    instance.start_pool(1)
    proc = follow(instance, "prefixjob")
    assert b"one\n" in read_until(proc.stdout, b"one\n")
    (instance.root / "release").touch()
    assert proc.wait(60) == 0 and proc.stdout.read() == b"two\n"
    err = proc.stderr.read().decode()
    assert f"=== job {job_id} is completed" in err and "attempt 1: succeeded (exit 0)" in err
    # the same job named twice (a prefix and its id) is one job to wait for
    done = instance.run("wait", "prefixj", job_id)
    assert done.stdout.split() == [job_id, "completed"]


def test_unknown_and_ambiguous_ids_are_one_line(instance):
    instance.enqueue("true", id="twin-1")
    instance.enqueue("true", id="twin-2")
    for args, code, text in ((("logs", "nosuch", "-f"), 1, "no job with id 'nosuch'"),
                             (("wait", "nosuch"), 1, "no job with id 'nosuch'"),
                             (("wait", "twin-1", "nosuch"), 1, "no job with id 'nosuch'"),
                             (("logs", "twin", "--follow"), 2, "ambiguous: twin-1, twin-2"),
                             (("wait", "twin"), 2, "ambiguous: twin-1, twin-2")):
        proc = instance.run(*args, check=False, timeout=30)
        assert proc.returncode == code and proc.stdout == "", args
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("queuectl: error: "), args
        assert text in proc.stderr, args


def stopped_while(procs, action) -> None:
    """Call ``action()`` while the processes ``procs`` (pids) are stopped (SIGSTOP), then let them go on."""
    for pid in procs:
        os.kill(pid, signal.SIGSTOP)
    try:
        action()
    finally:
        for pid in procs:
            os.kill(pid, signal.SIGCONT)


def cancel_and_purge(instance, job_id: str) -> None:
    instance.run("cancel", job_id)
    instance.wait_for_state(job_id, "cancelled")       # a running job is stopped first
    assert instance.run("purge", "--state", "cancelled", "--older-than", "0").stdout.strip() == "purged 1 job(s)"


def test_a_job_purged_while_followed_or_waited_for_ends_them_with_3(instance):
    job_id = instance.enqueue(f"echo started; {BLOCK.format(name='never')}")
    instance.start_pool(1)
    follower = follow(instance, job_id)
    assert b"started" in read_until(follower.stdout, b"started\n")
    pid, master = spawn_pty(instance, "wait", job_id)        # on a terminal: its bar shows it has the id
    try:
        assert b"0/1" in read_until(master, b"0/1")
        stopped_while([pid, follower.pid], lambda: cancel_and_purge(instance, job_id))
        screen = read_until(master, b"finished")
        assert exit_status(pid) == 3
    finally:
        os.close(master)
    no_traceback(screen)
    assert f"{job_id}  purged".encode() in screen and b"1/1 finished, 1 not completed" in screen
    assert follower.wait(60) == 3
    err = follower.stderr.read().decode()
    no_traceback(err)
    assert err.splitlines()[-1] == f"=== job {job_id} is purged"


def test_nothing_to_wait_for_is_one_line_and_success(instance):
    instance.run("init")
    for args in (("--all",), ("--queue", "empty"), ("--all", "--json")):
        proc = instance.run("wait", *args)
        assert "nothing to wait for" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert json.loads(proc.stdout) == {"done": {}, "waiting": [], "timed_out": False}


# --- odd output ------------------------------------------------------------------------------------


ODD = ("python3 -c 'import sys, time\n"
       "w = sys.stdout.buffer.write\n"
       "w(b\"bad \\xff\\xfe utf8 \\xe2\\x82 nul \\x00 end\\n\"); sys.stdout.flush()\n"
       "for i in range(4):\n"
       "    w(b\"\\r%d%%\" % (i * 25)); sys.stdout.flush(); time.sleep(0.02)\n"
       "w(b\"\\n\"); sys.stdout.flush()\n"
       "sys.stderr.buffer.write(b\"err \\xff\\n\")'")
ODD_OUT = b"bad \xff\xfe utf8 \xe2\x82 nul \x00 end\n\r0%\r25%\r50%\r75%\n"


def test_odd_bytes_are_followed_exactly_and_shown_as_valid_json(instance):
    job_id = instance.enqueue(f"{ODD}; {BLOCK.format(name='release')}")
    instance.start_pool(1)
    # stdout and stderr are stored as they come, each on its own: wait until each has the last line it
    # gets before the block (a look between two chunks sees part of the output only)
    entry = wait_until(lambda: next((e for e in instance.cli_json("logs", job_id) if e["running"] and
                                     e["stdout"].endswith("75%\n") and e["stderr"].endswith("\n")),
                                    None), message="the odd output while it runs")
    assert entry["stdout"] == ODD_OUT.decode("utf-8", "replace") and entry["stderr"] == "err \ufffd\n"
    piped = subprocess.run([*QUEUECTL, "logs", job_id[:6], "--stdout"], cwd=instance.root, env=instance.env,
                           capture_output=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout.startswith(b"=== attempt 1: running since ")
    assert piped.stdout.endswith(b"--- stdout\n" + ODD_OUT)       # the bytes so far, exactly, like a finished one
    proc = follow(instance, job_id)
    (instance.root / "release").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == ODD_OUT and b"err \xff\n" in err


def test_a_huge_line_without_newline_is_followed_within_the_cap(instance):
    cap = 4096
    instance.run("config", "set", "output-cap", cap)
    job_id = instance.enqueue("head -c 10485760 /dev/zero | tr '\\0' y; printf END")
    proc = follow(instance, job_id, "--stdout")          # from before the first byte
    instance.start_pool(1)
    out, err = proc.communicate(timeout=120)
    no_traceback(err)
    assert proc.returncode == 0
    assert out.startswith(b"y" * (cap // 2)) and out.endswith(b"y" * 100 + b"END")
    assert b"bytes truncated ...]" in out and len(out) < 10 * cap     # the middle was never stored, never sent
    [final] = instance.json("logs", job_id)
    assert len(final["stdout"].encode()) <= cap + 64


def test_closed_stdout_and_an_outliving_child_end_the_follow(instance):
    closes = instance.enqueue("echo before; exec >&-; echo after-close >&2")
    outlives = instance.enqueue("(while true; do echo background; sleep 0.05; done) & echo main")
    proc_a = follow(instance, closes)
    proc_b = follow(instance, outlives, "--stdout")
    instance.start_pool(2)
    out, err = proc_a.communicate(timeout=60)
    assert proc_a.returncode == 0 and out == b"before\n" and b"after-close\n" in err
    out, err = proc_b.communicate(timeout=60)     # the child is stopped with the attempt: the follow ends
    assert proc_b.returncode == 0 and b"main\n" in out
    no_traceback(err)
    assert instance.job(outlives)["state"] == "completed"


def test_follow_on_a_terminal_escapes_unless_raw(instance):
    job_id = instance.enqueue("printf '\\033[31mred\\n'")
    instance.start_pool(1)
    instance.wait_for_state(job_id, "completed")
    for args, wanted in ((("-f",), b"\\x1b[31mred"), (("-f", "--raw"), b"\x1b[31mred")):
        pid, master = spawn_pty(instance, "logs", job_id, *args)
        try:
            screen = read_until(master, b"completed")
            assert exit_status(pid) == 0
        finally:
            os.close(master)
        assert wanted in screen, args


# --- a worker killed while its output streams ------------------------------------------------------


def test_follow_ends_when_a_killed_workers_job_ends(instance):
    job_id = instance.enqueue("while true; do echo tick; sleep 0.05; done", max_retries=0)
    instance.start_pool(1)
    proc = follow(instance, job_id)
    assert b"tick\n" in read_until(proc.stdout, b"tick\ntick\n")
    os.kill(worker_running(instance, job_id), signal.SIGKILL)
    assert proc.wait(60) == 3                    # worker lost, no retry left: dead
    err = proc.stderr.read().decode()
    no_traceback(err)
    assert "=== attempt 1: worker_lost in " in err and "exit None" not in err
    assert err.splitlines()[-1] == f"=== job {job_id} is dead"
    assert "=== attempt 1: worker_lost in " in instance.run("logs", job_id).stdout


# --- wait and top off the beaten path --------------------------------------------------------------


def test_wait_exits_130_on_ctrl_c(instance):
    job_id = instance.enqueue("true", delay="1h")
    pid, master = spawn_pty(instance, "wait", job_id)
    try:
        assert b"0/1" in read_until(master, b"0/1")
        os.write(master, b"\x03")
        assert exit_status(pid) == 130
    finally:
        os.close(master)
    assert instance.job(job_id)["state"] == "pending"


def test_top_needs_a_terminal_for_stdout(instance):
    instance.run("init")
    proc = instance.run("top", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "queuectl: error: queuectl top needs a terminal (use `status --json` in scripts)")


def top_in_tmux(instance, cols: int, rows: int, stdin: str = ""):
    """`top` in a tmux window of cols x rows; its exit code lands in rc.txt."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed (.ci/run installs it)")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    instance.run("init")
    name = f"qe-{os.getpid()}-{time.monotonic_ns()}"
    env = " ".join(f"{k}='{v}'" for k, v in instance.env.items() if k.startswith(("QUEUECTL_", "XDG_", "PYTHON")))
    # COLUMNS and LINES exported (by a shell, or by the tmux server's environment) must not pin the size
    command = (f"cd '{instance.root}' && env {env} COLUMNS=80 LINES=24 {' '.join(QUEUECTL)} top --interval 0.3 "
               f"{stdin}; echo rc=$? > rc.txt")
    tmux("new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), command)
    return name


def top_exit(instance) -> str:
    return wait_until(lambda: (instance.root / "rc.txt").exists() and (instance.root / "rc.txt").read_text().strip(),
                      message="top to exit")


def test_top_in_a_tiny_terminal_shows_every_count_and_follows_a_resize(instance):
    instance.enqueue("exit 7", max_retries=0)
    instance.start_pool(1)
    wait_until(lambda: instance.cli_json("status")["counts"]["dead"] == 1, message="the failing job to die")
    session = top_in_tmux(instance, 40, 10)
    try:
        counts = instance.json("status")["counts"]
        pairs = [f"{state} {n}" for state, n in counts.items()]

        def shown(width, height=10):
            text = tmux("capture-pane", "-p", "-t", session)
            lines = text.splitlines()
            fits = all(len(line) <= width for line in lines) and len(lines) <= height
            return text if fits and all(pair in text for pair in pairs) else None
        wait_until(lambda: shown(40), message="every count in 40x10")
        tmux("resize-window", "-t", session, "-x", "100", "-y", "30")
        wide = wait_until(lambda: (lambda t: t if t and max(map(len, t.splitlines())) > 80 else None)(shown(100, 30)),
                          message="top redrawn at 100 columns")
        assert "  ".join(pairs) in wide           # one line again once there is room
        tmux("send-keys", "-t", session, "q")
        assert top_exit(instance) == "rc=0"
    finally:
        tmux("kill-session", "-t", session)


def test_top_with_stdin_not_a_terminal_runs_until_ctrl_c(instance):
    session = top_in_tmux(instance, 80, 24, stdin="< /dev/null")
    try:
        first = wait_until(lambda: (lambda t: t if "q quits" in t else None)(
            tmux("capture-pane", "-p", "-t", session)), message="top to draw")
        clock = first.split()[2]
        wait_until(lambda: clock not in tmux("capture-pane", "-p", "-t", session).split("\n")[0],
                   message="top to redraw (it must not take /dev/null's end for a q)")
        assert not (instance.root / "rc.txt").exists()
        tmux("send-keys", "-t", session, "C-c")
        assert top_exit(instance) == "rc=130"
    finally:
        tmux("kill-session", "-t", session)


def test_live_output_keeps_local_files_private_and_postgres_watchers_need_none(instance, backend, tmp_path):
    job_id = instance.enqueue(f"echo line 1; {BLOCK.format(name='release')}; echo line 2")
    instance.start_pool(1)
    instance.wait_for_state(job_id, "processing")
    if backend == "sqlite":
        (instance.root / "release").touch()
        assert instance.run("logs", job_id, "-f").stdout == "line 1\nline 2\n"
        made = {p.name for p in instance.root.iterdir()} - {"config.yaml", "plugins", "release"}
        assert {"queue.db", "queue.db-wal", "queue.db-shm"} <= made
        for name in made:
            path = instance.root / name
            assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), name
        return
    # "another machine": only the URL, in an empty folder with empty XDG folders, no config file
    elsewhere = tmp_path / "elsewhere"
    for name in ("cwd", "data", "config", "cache"):
        (elsewhere / name).mkdir(parents=True)
    env = {k: v for k, v in instance.env.items() if not k.startswith(("QUEUECTL_", "XDG_"))}
    env.update(QUEUECTL_DB=instance.config["db"], QUEUECTL_PG_SCHEMA=instance.config["pg-schema"],
               XDG_DATA_HOME=str(elsewhere / "data"), XDG_CONFIG_HOME=str(elsewhere / "config"),
               XDG_CACHE_HOME=str(elsewhere / "cache"))
    follower = subprocess.Popen([*QUEUECTL, "logs", job_id, "-f"], cwd=elsewhere / "cwd", env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert b"line 1\n" in read_until(follower.stdout, b"line 1\n")
    (instance.root / "release").touch()
    assert follower.wait(60) == 0 and follower.stdout.read() == b"line 2\n"
    waited = subprocess.run([*QUEUECTL, "wait", job_id], cwd=elsewhere / "cwd", env=env, capture_output=True)
    assert waited.returncode == 0 and waited.stdout.split() == [job_id.encode(), b"completed"]
    # nothing kept here (start-up caches aside, which only speed a command up)
    assert [p for name in ("cwd", "data", "config") for p in (elsewhere / name).rglob("*")] == []


def test_logs_attempt_n_of_the_running_attempt_shows_it(instance):
    job_id = instance.enqueue(f"echo so-far; {BLOCK.format(name='release')}")
    instance.start_pool(1)
    wait_until(lambda: any(e["running"] and e["stdout"] == "so-far\n" for e in instance.cli_json("logs", job_id)),
               message="the running attempt's output")
    shown = instance.run("logs", job_id, "--attempt", "1", check=False)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("=== attempt 1: running since ") and "so-far" in shown.stdout
    missing = instance.run("logs", job_id, "--attempt", "2", check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == f"queuectl: error: job '{job_id}' has no attempt 2"
    (instance.root / "release").touch()
    instance.wait_for_state(job_id, "completed")
    assert "attempt 1: succeeded (exit 0)" in instance.run("logs", job_id, "--attempt", "1").stdout


def test_wait_bar_fits_the_terminal_whatever_columns_says(instance):
    instance.env["COLUMNS"] = "200"                  # exported and stale: the terminal has 50 columns
    _, bars = wait_on_a_terminal(instance, [instance.enqueue(BLOCK.format(name="release"))], cols=50)
    assert bars and all(len(line) <= 50 for line in bars)
