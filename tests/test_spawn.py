"""What a job's command starts with, through real workers: the executor starts commands with
posix_spawn (and subprocess only for a working folder), and either way a command gets its own
session, stdin from /dev/null, only descriptors 0-2, SIGPIPE at its default, and is looked up on
the job's own PATH."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

BOTH_BACKENDS = True

# Prints: open descriptors, whether SIGPIPE (bit 13) is blocked or ignored, the session leader's pid and $$,
# what stdin is.
PROBE = ("ls /proc/$$/fd; echo --; "      # (ls in no pipeline: a pipe would be the shell's own descriptor)
         "awk '/^Sig(Ign|Blk)/ {print $1, and(strtonum(\"0x\" $2), 4096) ? \"pipe\" : \"-\"}' /proc/$$/status; "
         "ps -o sid= -p $$ | tr -d ' '; echo $$; readlink /proc/$$/fd/0")

# A plugin that leaves an inheritable descriptor open in every worker, as a careless C library could.
LEAKY_PLUGIN = """
import os
from queuectl import hookimpl

LEAKED = {}


@hookimpl
def queuectl_attempt_started(job, attempt, queue):
    if os.getpid() not in LEAKED:          # in the worker itself, right before it starts the command
        LEAKED[os.getpid()] = fd = os.open(os.devnull, os.O_RDONLY)
        os.set_inheritable(fd, True)
"""


def run_job(instance, spec: dict) -> dict:
    job_id = instance.run("enqueue", json.dumps(spec)).stdout.strip()
    instance.run("worker", "start", "--burst")
    return instance.job(job_id)


def test_a_command_gets_its_own_session_dev_null_and_only_three_descriptors(instance):
    (instance.plugins / "leaky.py").write_text(LEAKY_PLUGIN)
    folder = instance.root / "elsewhere"
    folder.mkdir()
    for spec in ({"command": PROBE}, {"command": PROBE + "; pwd", "cwd": str(folder)}):
        job = run_job(instance, spec)
        assert job["state"] == "completed", job
        check_probe(job["history"][-1]["stdout"], folder if "cwd" in spec else None)
    assert os.getcwd() != str(folder)


def check_probe(output: str, folder=None) -> None:
    fds, rest = output.split("--\n")
    lines = rest.splitlines()
    blocked, ignored, sid, pid, stdin = lines[:5]
    assert sorted(fds.split()) == ["0", "1", "2"], f"a worker's descriptor leaked into the command: {fds}"
    assert (blocked, ignored) == ("SigBlk: -", "SigIgn: -"), "SIGPIPE is at its default"
    assert sid == pid, "the command leads its own session"
    assert stdin == "/dev/null"
    if folder is not None:
        assert lines[5:] == [str(folder)]


SPAWN_ELSEWHERE = """
import os, signal, sys, threading
from queuectl.builtin.shell import spawn
signal.signal(signal.SIGPIPE, signal.SIG_IGN)          # as Python leaves it: the command must not inherit it
leak = os.open(os.devnull, os.O_RDONLY)
os.set_inheritable(leak, True)
if sys.argv[1] == "thread":                            # another thread: the worker must not change folder
    threading.Thread(target=threading.Event().wait, daemon=True).start()
else:
    os.close(0)                                        # a descriptor 0-2 free
before = os.getcwd()
proc = spawn(["/bin/sh", "-c", sys.argv[2]], dict(os.environ), cwd=sys.argv[3])
sys.stdout.write(proc.stdout.read().decode())
assert proc.wait() == 0 and os.getcwd() == before
"""


@pytest.mark.parametrize("how", ["thread", "closed-stdin"])
def test_spawn_falls_back_to_subprocess_with_the_same_guarantees(tmp_path, how):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    proc = subprocess.run([sys.executable, "-c", SPAWN_ELSEWHERE, how, PROBE + "; pwd", str(folder)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    check_probe(proc.stdout, folder)


SPAWN_WITH_A_STRAY = """
import os, sys
from queuectl.builtin import shell
if sys.argv[1] == "listing":
    shell._close_range = False            # as where close_range is refused: the strays are listed and closed
leak = os.open(os.devnull, os.O_RDONLY)
os.set_inheritable(leak, True)
for _ in range(2):                        # the first start finds out which way works, the next one uses it
    proc = shell.spawn(["/bin/sh", "-c", sys.argv[2]], dict(os.environ))
    sys.stdout.write(proc.stdout.read().decode())
    assert proc.wait() == 0
    leak2 = os.open(os.devnull, os.O_RDONLY)    # a stray opened after the first start
    os.set_inheritable(leak2, True)
print("inheritable in the worker:", os.get_inheritable(leak))
"""


@pytest.mark.parametrize("way", ["close_range", "listing"])
def test_a_stray_inheritable_descriptor_never_reaches_the_command(tmp_path, way):
    proc = subprocess.run([sys.executable, "-c", SPAWN_WITH_A_STRAY, way, PROBE], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    *runs, last = proc.stdout.split("/dev/null\n")
    assert len(runs) == 2
    for output in runs:
        check_probe(output + "/dev/null\n")
    # close_range marks it close-on-exec in the worker; the listing closes it in the child only
    assert last.strip() == f"inheritable in the worker: {way == 'listing'}"


def test_an_argv_job_is_looked_up_on_its_own_path(instance):
    tools, denied = instance.root / "tools", instance.root / "denied"
    tools.mkdir()
    denied.mkdir()
    (tools / "greet").write_text("#!/bin/sh\necho \"hello $1 from $0\"\n")
    (tools / "greet").chmod(0o755)
    (denied / "greet").write_text("#!/bin/sh\necho never\n")
    (denied / "greet").chmod(0o644)                   # not executable: skipped, like execvp does
    path = f"{instance.root}/nowhere:{denied}:{tools}:/usr/bin:/bin"
    job = run_job(instance, {"argv": ["greet", "world"], "env": {"PATH": path}})
    assert job["state"] == "completed", job
    assert job["history"][0]["stdout"] == f"hello world from {tools}/greet\n"

    only_denied = run_job(instance, {"argv": ["greet"], "env": {"PATH": str(denied)}, "max_retries": 0})
    assert only_denied["state"] == "dead"
    assert only_denied["history"][0]["error"] == f"could not start: {denied}/greet: Permission denied"

    missing = run_job(instance, {"argv": ["no-such-tool-here"], "max_retries": 0})
    assert missing["state"] == "dead"
    assert missing["history"][0]["error"] == "could not start: no-such-tool-here: No such file or directory"
    absent = run_job(instance, {"argv": [f"{tools}/absent", "x"], "max_retries": 0})
    assert absent["history"][0]["error"] == f"could not start: {tools}/absent: No such file or directory"


def test_a_job_that_could_not_start_is_logged_without_an_exit_code(instance):
    # Its folder gone before it ran: no process, so no exit code; the -v line said "(exit None)".
    folder = instance.root / "gone"
    folder.mkdir()
    instance.run("enqueue", "--id", "lost", "--cwd", str(folder), "--max-retries", "0", "pwd")
    folder.rmdir()
    proc = instance.run("worker", "start", "--burst", "-v")
    (line,) = [line for line in proc.stderr.splitlines() if "job lost attempt 1" in line]
    assert line.split("queuectl: ", 1)[1].startswith("job lost attempt 1: start_error in "), line
    assert "None" not in line and line.endswith("-> dead: gave up after 1 attempt(s): could not start: "
                                                f"its folder {folder}: No such file or directory"), line


def test_a_command_that_writes_to_a_closed_pipe_dies_of_sigpipe_like_in_a_shell(instance):
    # `yes` ends only by SIGPIPE once head exits: with SIGPIPE ignored it would loop on EPIPE errors.
    # With SIGPIPE ignored, `yes` would instead see EPIPE and complain on stderr.
    job = run_job(instance, {"command": "yes | head -n 1", "timeout": 60})
    assert job["state"] == "completed", job
    assert (job["history"][0]["stdout"], job["history"][0]["stderr"]) == ("y\n", "")


SCHED_PROBE = "chrt -p $$ | sed 's/.*: //'; chrt -p $PPID | sed 's/.*: //'; cut -d' ' -f19 /proc/$$/stat"


@pytest.mark.parametrize("priority", ["realtime", "normal"])
def test_a_command_runs_at_the_normal_policy_whatever_its_worker_runs_at(instance, priority):
    instance.run("config", "set", "worker-priority", priority)
    job = run_job(instance, {"command": SCHED_PROBE})
    assert job["state"] == "completed", job
    command_policy, command_prio, worker_policy, worker_prio, nice = job["history"][0]["stdout"].splitlines()
    assert (command_policy, command_prio, nice) == ("SCHED_OTHER", "0", "0")
    allowed = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] > 0
    if priority == "realtime" and allowed:
        assert (worker_policy, worker_prio) == ("SCHED_RR|SCHED_RESET_ON_FORK", "1")
    else:
        assert (worker_policy, worker_prio) == ("SCHED_OTHER", "0")


# A plugin that changes the worker's environment before each attempt and records, after each one, how
# many descriptors the worker holds: the executor keeps a decoded copy of the environment between
# attempts, so it must see every change, and an attempt must give back every descriptor it opened.
ENV_AND_FD_PLUGIN = """
import os
from queuectl import hookimpl


@hookimpl
def queuectl_attempt_started(job, attempt, queue):
    os.environ["QUEUECTL_TEST_SEEN"] = job.id
    if job.id.endswith("-unset"):
        del os.environ["QUEUECTL_TEST_SEEN"]


@hookimpl
def queuectl_attempt_finished(job, attempt, queue):
    with open(os.environ["QUEUECTL_TEST_FDS"], "a") as fh:
        fh.write(f"{len(os.listdir('/proc/self/fd'))}\\n")
"""


def test_each_attempt_sees_the_workers_environment_as_it_is_now_and_leaves_no_descriptor(instance):
    (instance.plugins / "envprobe.py").write_text(ENV_AND_FD_PLUGIN)
    fds = instance.root / "fds.txt"
    ids = [f"env-{n}" + ("-unset" if n % 3 == 2 else "") for n in range(30)]
    command = 'echo "${QUEUECTL_TEST_SEEN-unset}"; echo out; echo err >&2'
    instance.run("enqueue", "--file", "-", input="".join(json.dumps({"id": i, "command": command}) + "\n" for i in ids))
    instance.run("worker", "start", "--burst", env={"QUEUECTL_TEST_FDS": str(fds)})
    for job_id in ids:
        job = instance.job(job_id, env={"QUEUECTL_DISABLE_PLUGINS": "envprobe"})     # a look: no probe needed
        assert job["state"] == "completed", job
        seen = "unset" if job_id.endswith("-unset") else job_id
        assert job["history"][0]["stdout"] == f"{seen}\nout\n", job_id
    counts = [int(n) for n in fds.read_text().split()]
    assert len(counts) == len(ids) and len(set(counts[1:])) == 1, f"descriptors per attempt: {counts}"
