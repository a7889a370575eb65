"""Watching jobs run: output stored while an attempt runs, `logs --follow`, `wait` and `top`.

Real workers, real output, real terminals (a pty, and tmux for `top`), a real SIGINT; every
test runs on SQLite and PostgreSQL.
"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time

import pytest

from conftest import QUEUECTL, pg_execute, wait_until

BOTH_BACKENDS = True

# The job blocks until the test creates the file, so "seen while it runs" needs no timing.
BLOCK = "while [ ! -e {name} ]; do sleep 0.05; done"


def follow(instance, job_id, *args) -> subprocess.Popen:
    return subprocess.Popen([*QUEUECTL, "logs", job_id, "--follow", *args], cwd=instance.root, env=instance.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_until(stream, wanted: bytes, timeout: float = 30.0) -> bytes:
    """Bytes from a pipe or pty until ``wanted`` shows up (or the deadline passes)."""
    got = b""
    fd = stream if isinstance(stream, int) else stream.fileno()
    deadline = time.monotonic() + timeout
    while wanted not in got and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            got += data
    return got


def spawn_pty(instance, *args, rows: int = 24, cols: int = 80) -> tuple[int, int]:
    """queuectl in a new pseudo-terminal of rows x cols, as its controlling terminal."""
    pid, master = pty.fork()
    if pid == 0:
        try:
            # A terminal's session starts with Ctrl-C at its default, even when the tests were started
            # in the background (`nohup cmd &` ignores SIGINT, and an ignored signal survives exec).
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.chdir(instance.root)
            os.execve(QUEUECTL[0], [*QUEUECTL, *args], {**instance.env, "TERM": "xterm"})
        finally:
            os._exit(127)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    return pid, master


def exit_status(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the process did not exit")


def stored_chunk_bytes(instance, job_id: str) -> int:
    if instance.config["db"].startswith("postgresql"):
        schema = instance.config["pg-schema"]
        rows = pg_execute(f'SELECT COALESCE(SUM(length(data)), 0) FROM "{schema}".output_chunks WHERE job_id = %s',
                          (job_id,))
        return int(rows[0][0])
    import sqlite3

    with sqlite3.connect(instance.root / "queue.db") as conn:
        return conn.execute("SELECT COALESCE(SUM(length(data)), 0) FROM output_chunks WHERE job_id = ?",
                            (job_id,)).fetchone()[0]


# --- output stored while the attempt runs -----------------------------------------------------


def test_logs_of_a_running_job_show_its_output_so_far(instance):
    job_id = instance.enqueue(f"echo first; echo oops >&2; {BLOCK.format(name='release')}; echo second")
    instance.start_pool(1)
    # stdout and stderr are stored as they come, each on its own: wait for what both had before the block
    # (a look between the two chunks sees one stream only)
    entry = wait_until(lambda: next((e for e in instance.cli_json("logs", job_id) if e["running"] and
                                     e["stdout"] == "first\n" and e["stderr"]), None), message="live output")
    assert entry["stderr"] == "oops\n" and entry["outcome"] == "running" and entry["exit_code"] is None
    text = instance.run("logs", job_id).stdout
    assert "attempt 1: running" in text and "first" in text and "second" not in text
    (instance.root / "release").touch()
    instance.wait_for_state(job_id, "completed")
    [final] = instance.json("logs", job_id)
    assert final["stdout"] == "first\nsecond\n" and final["running"] is False


def test_live_output_keeps_the_cap(instance):
    cap = 4096
    instance.run("config", "set", "output-cap", cap)
    job_id = instance.enqueue("head -c 300000 /dev/zero | tr '\\0' x; printf END; "
                              f"{BLOCK.format(name='release')}")
    instance.start_pool(1)
    entry = wait_until(lambda: next((e for e in instance.cli_json("logs", job_id)
                                     if e["running"] and e["stdout"].endswith("END")), None), message="the tail")
    assert entry["stdout"].startswith("x" * (cap // 2))
    assert "bytes truncated" in entry["stdout"]
    # the head, the tail, and at most one chunk straddling where the tail starts
    assert stored_chunk_bytes(instance, job_id) <= cap + cap // 2
    (instance.root / "release").touch()
    instance.wait_for_state(job_id, "completed")
    [final] = instance.json("logs", job_id)
    assert len(final["stdout"].encode()) <= cap + 64 and final["stdout"].endswith("END")


# --- logs --follow --------------------------------------------------------------------------------


def test_follow_streams_output_while_the_job_runs(instance):
    job_id = instance.enqueue(f"echo one; {BLOCK.format(name='go2')}; echo two; {BLOCK.format(name='go3')}; "
                              f"echo three")
    instance.start_pool(1)
    proc = follow(instance, job_id)
    assert b"one\n" in read_until(proc.stdout, b"one\n")
    (instance.root / "go2").touch()
    assert b"two\n" in read_until(proc.stdout, b"two\n")      # the job still waits for go3
    assert instance.job(job_id)["state"] == "processing"
    (instance.root / "go3").touch()
    rest = proc.stdout.read()
    assert proc.wait(30) == 0 and rest == b"three\n"
    header = proc.stderr.read().decode()
    assert "=== attempt 1" in header and "completed" in header


def test_follow_goes_on_across_retries_with_a_header_per_attempt(instance):
    job_id = instance.enqueue("if [ -e tried ]; then echo second; else touch tried; echo first; exit 3; fi",
                              max_retries=2)
    proc = follow(instance, job_id)                # from before the first attempt starts
    instance.start_pool(1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out == b"first\nsecond\n"
    headers = [line for line in err.decode().splitlines() if line.startswith("=== attempt")]
    assert {h.split()[2].rstrip(":") for h in headers} == {"1", "2"}
    assert any(h.startswith("=== attempt 1: failed (exit 3)") for h in headers)
    assert any(h.startswith("=== attempt 2: succeeded (exit 0)") for h in headers)


def test_follow_piped_is_byte_exact_and_picks_one_stream(instance):
    job_id = instance.enqueue("printf '\\033]0;title\\007\\001raw\\n'; printf 'to stderr\\n' >&2; "
                              f"{BLOCK.format(name='release')}")
    instance.start_pool(1)
    only_out = follow(instance, job_id, "--stdout")
    only_err = follow(instance, job_id, "--stderr")
    assert b"raw\n" in read_until(only_out.stdout, b"raw\n")
    assert b"to stderr" in read_until(only_err.stdout, b"to stderr\n")
    (instance.root / "release").touch()
    assert only_out.wait(30) == 0 and only_err.wait(30) == 0
    assert only_out.stdout.read() == b""
    # read_until consumed everything: check the exact bytes through a fresh follow of the finished job
    done = instance.run("logs", job_id, "--follow", "--stdout")
    assert done.stdout == "\x1b]0;title\x07\x01raw\n"
    assert instance.run("logs", job_id, "-f", "--stderr").stdout == "to stderr\n"
    # Both streams picked: one of them used to win silently (the last given), as if the other were empty.
    for args in (["--stdout", "--stderr"], ["--stderr", "--stdout"], ["-f", "--stderr", "--stdout"]):
        proc = instance.run("logs", job_id, *args, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == \
            (2, "", "queuectl: error: give --stdout or --stderr (one stream), or neither for both\n"), args


def test_follow_exits_like_wait_for_dead_and_cancelled_jobs(instance):
    dead = instance.enqueue("echo bad; exit 9", max_retries=0)
    stuck = instance.enqueue(BLOCK.format(name="never"))
    instance.start_pool(2)
    assert instance.run("logs", dead, "-f", check=False).returncode == 3
    instance.wait_for_state(stuck, "processing")
    proc = follow(instance, stuck)
    instance.run("cancel", stuck)
    assert proc.wait(60) == 3
    assert instance.run("logs", dead, "--follow", "--json", check=False).returncode == 2


def test_ctrl_c_stops_following_with_130(instance):
    job_id = instance.enqueue(f"echo started; {BLOCK.format(name='never')}")
    instance.start_pool(1)
    pid, master = spawn_pty(instance, "logs", job_id, "--follow")
    try:
        assert b"started" in read_until(master, b"started")
        os.write(master, b"\x03")                 # the terminal turns it into SIGINT
        assert exit_status(pid) == 130
    finally:
        os.close(master)
    assert instance.job(job_id)["state"] == "processing"       # following never touches the job


# --- wait ---------------------------------------------------------------------------------------------


def test_wait_exit_codes(instance):
    ok = instance.enqueue("true")
    retried = instance.enqueue("if [ -e tried ]; then exit 0; else touch tried; exit 1; fi", max_retries=2)
    dead = instance.enqueue("exit 5", max_retries=0)
    later = instance.enqueue("true", delay="1h")
    instance.start_pool(2)
    done = instance.run("wait", ok, retried)
    assert done.returncode == 0
    assert sorted(done.stdout.split()) == sorted([ok, "completed", retried, "completed"])
    assert instance.json("show", retried)["attempts"] == 2
    assert instance.run("wait", ok, dead, check=False).returncode == 3
    timed_out = instance.run("wait", later, "--timeout", "0.5", check=False)
    assert timed_out.returncode == 4 and "timed out" in timed_out.stderr
    instance.run("cancel", later)
    assert instance.run("wait", later, check=False).returncode == 3
    assert instance.run("wait", "no-such-job", check=False).returncode == 1
    assert instance.run("wait", check=False).returncode == 2


def test_wait_all_and_queue_with_json(instance):
    # The batch is held until `wait --queue` has taken its jobs (its bar shows 0/3), so it waits for all
    # three whatever the machine's speed; the job of another queue is not waited for.
    ids = [instance.enqueue(BLOCK.format(name="go"), queue="batch") for _ in range(3)]
    other = instance.enqueue(BLOCK.format(name="release"))
    instance.start_pool(2)
    pid, master = spawn_pty(instance, "wait", "--queue", "batch")
    try:
        read_until(master, b"0/3")
        (instance.root / "go").touch()
        screen = read_until(master, b"3/3 finished")
        assert exit_status(pid) == 0
    finally:
        os.close(master)
    assert b"0 not completed" in screen
    assert instance.job(other)["state"] in ("pending", "processing")
    data = json.loads(instance.run("wait", *ids, "--json").stdout)
    assert data["done"] == {job_id: "completed" for job_id in ids} and data["timed_out"] is False
    (instance.root / "release").touch()
    assert instance.run("wait", "--all").returncode == 0
    assert instance.job(other)["state"] == "completed"


def wait_on_a_terminal(instance, ids: list, cols: int = 80) -> tuple[bytes, list]:
    """`wait IDS` on a pty of ``cols`` columns while the jobs (held by a release file) run: the screen,
    and its bar lines as drawn."""
    pid, master = spawn_pty(instance, "wait", *ids, cols=cols)
    try:
        screen = read_until(master, f"0/{len(ids)}".encode())
        assert b"\r[" in screen and b"ETA" in screen
        instance.start_pool(2)
        (instance.root / "release").touch()
        screen += read_until(master, f"{len(ids)}/{len(ids)} finished".encode())
        assert exit_status(pid) == 0
    finally:
        os.close(master)
    bars = [line.replace(b"\x1b[K", b"") for line in screen.replace(b"\r", b"\n").split(b"\n") if line.startswith(b"[")]
    return screen, bars


def test_wait_draws_a_progress_bar_on_a_terminal(instance):
    ids = [instance.enqueue(BLOCK.format(name="release")) for _ in range(4)]
    screen, bars = wait_on_a_terminal(instance, ids)
    assert b"4/4 finished, 0 not completed" in screen
    assert not any(job_id.encode() in screen for job_id in ids)     # no line per job on a terminal
    assert bars and all(len(line) <= 80 for line in bars)


# --- top ------------------------------------------------------------------------------------------------


def tmux(*args) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def tmux_session(instance):
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed (.ci/run installs it)")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    instance.run("init")                   # `top` only reads: it never creates the store
    name = f"qt-{os.getpid()}-{time.monotonic_ns()}"
    env = " ".join(f"{k}='{v}'" for k, v in instance.env.items() if k.startswith(("QUEUECTL_", "XDG_", "PYTHON")))
    command = f"cd '{instance.root}' && env {env} {' '.join(QUEUECTL)} top --interval 0.3; echo rc=$? > rc.txt"
    tmux("new-session", "-d", "-s", name, "-x", "80", "-y", "24", command)
    yield name
    tmux("kill-session", "-t", name)


def test_top_shows_the_counts_the_cli_shows(instance, tmux_session):
    running = [instance.enqueue(BLOCK.format(name="release"), queue="work") for _ in range(2)]
    instance.enqueue("echo broken >&2; exit 7", max_retries=0)
    instance.run("queue", "pause", "held")
    for _ in range(3):
        instance.enqueue("true", queue="held")
    instance.start_pool(3)
    for job_id in running:
        instance.wait_for_state(job_id, "processing")
    wait_until(lambda: instance.cli_json("status")["counts"]["dead"] == 1, message="the failing job to die")
    counts = instance.json("status")["counts"]
    expected = "  ".join(f"{state} {counts[state]}" for state in counts)

    def screen():
        text = tmux("capture-pane", "-p", "-t", tmux_session)
        return text if expected in text and "exit code 7" in text else None
    text = wait_until(screen, message="top showing the counts")
    lines = text.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert any(line.split()[:3] == ["held", "3", "0"] for line in lines)
    assert sum(1 for line in lines if BLOCK.format(name="release")[:20] in line) == 2     # workers' commands
    tmux("send-keys", "-t", tmux_session, "q")
    assert wait_until(lambda: (instance.root / "rc.txt").exists() and
                      (instance.root / "rc.txt").read_text().strip(), message="top to exit") == "rc=0"
    (instance.root / "release").touch()


def test_top_exits_130_on_ctrl_c(instance, tmux_session):
    wait_until(lambda: "q quits" in tmux("capture-pane", "-p", "-t", tmux_session), message="top to draw")
    tmux("send-keys", "-t", tmux_session, "C-c")
    assert wait_until(lambda: (instance.root / "rc.txt").exists() and
                      (instance.root / "rc.txt").read_text().strip(), message="top to exit") == "rc=130"


def test_live_output_reaches_readers_with_the_longest_pg_schema_name(tmp_path):
    # pg-schema may have 48 characters; the output channel's name, "queuectl_output_" and the schema,
    # then had 64, one more than PostgreSQL takes: every NOTIFY of a chunk failed, and with it the
    # chunk, so `logs` of a running job showed no output and `logs -f` waited for the attempt's end.
    import uuid

    from conftest import FAST_CONFIG, PG_URL, Instance, require_pg

    require_pg()
    schema = "qt_" + (uuid.uuid4().hex * 2)[:45]                        # 48 characters
    inst = Instance(tmp_path, dict(FAST_CONFIG, db=PG_URL, **{"pg-schema": schema}))
    try:
        job_id = inst.enqueue("echo first; " + BLOCK.format(name="release") + "; echo second")
        proc = follow(inst, job_id, "--stdout")
        inst.start_pool(1)
        assert read_until(proc.stdout, b"first\n").endswith(b"first\n")     # while the job still runs
        (running,) = inst.cli_json("logs", job_id)
        assert running["running"] and running["stdout"] == "first\n"
        (inst.root / "release").touch()
        assert proc.wait(30) == 0 and proc.stdout.read() == b"second\n"
    finally:
        inst.cleanup()
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
