"""The command line: JSON on stdout, one error line on stderr, exit 1 or 2, and nothing changed."""
import json
import os
import re
import subprocess

import pytest

from conftest import QUEUECTL

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_enqueue_forms_and_job_json(instance):
    a = instance.run("enqueue", "--command", "echo Hello World").stdout.strip()
    b = instance.run("enqueue", '{"id":"job1","command":"sleep 2"}').stdout.strip()
    c = instance.run("enqueue", "--command", "./backup.sh", "--id", "nightly", "--max-retries", "5",
                     "--env", "A=1", "--timeout", "9").stdout.strip()
    assert b == "job1" and c == "nightly" and re.fullmatch(r"[0-9a-f]{16}", a)
    jobs = {j["id"]: j for j in instance.json("list", "--state", "pending")}
    assert set(jobs) == {a, "job1", "nightly"}
    for job in jobs.values():
        assert {"id", "command", "state", "attempts", "max_retries", "created_at", "updated_at"} <= set(job)
        assert job["state"] == "pending" and job["attempts"] == 0
        assert ISO.match(job["created_at"]) and ISO.match(job["updated_at"])
        assert job["cwd"] == str(instance.root)
    assert jobs["nightly"]["max_retries"] == 5 and jobs["nightly"]["env"] == {"A": "1"}
    assert jobs["nightly"]["timeout"] == 9 and jobs[a]["max_retries"] == 3


def test_enqueue_many_from_stdin_is_all_or_nothing(instance):
    lines = "\n".join(json.dumps({"command": f"echo {n}"}) for n in range(50))
    ids = instance.run("enqueue", "--file", "-", input=lines).stdout.split()
    assert len(ids) == 50 and len(instance.json("list")) == 50
    bad = lines + "\n" + json.dumps({"command": ""})
    proc = instance.run("enqueue", "--file", "-", input=bad, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "queuectl: error: line 51: command is empty"
    assert len(instance.json("list")) == 50



def test_file_lines_are_json_lines_whatever_their_spacing(instance):
    # Blank lines, spaces around a job, CRLF and the other line breaks of str.splitlines (a vertical
    # tab here) read as they always have; a later error names its line counted the same way.
    lines = ['{"command": "echo 1"}', "", "   ", '  {"command": "echo 2"}', '{"command": "echo 3"}  ',
             '\t{"command": "echo 4"}\t', '{"command": "echo 5"}\x0b{"command": "echo 6"}', '["not", "a job"]']
    text = "\r\n".join(lines[:-1]) + "\r\n"
    ids = instance.run("enqueue", "--file", "-", input=text).stdout.split()
    assert [instance.job(i)["command"] for i in ids] == [f"echo {n}" for n in range(1, 7)]
    proc = instance.run("enqueue", "--file", "-", input=text + lines[-1] + "\n", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "queuectl: error: line 9: a job must be a mapping of fields (a JSON object)"
    proc = instance.run("enqueue", "--file", "-", input=text + '{"command": "x"} {"command": "y"}\n', check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "queuectl: error: line 9: malformed JSON: Extra data at line 1 column 18"
    proc = instance.run("enqueue", "--file", "-", input='{"command": ""}\n{"command": NaN}\n', check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "queuectl: error: line 2: malformed JSON: NaN is not JSON"
    # a key given twice (json.loads would keep the last): refused, in a line, in an array, nested
    for batch, where in (('{"command": "echo a"}\n{"command": "x", "queue": "a", "queue": "b"}\n', "line 2"),
                         ('[{"command": "echo a"}, {"command": "x", "labels": {"k": "1", "k": "2"}}]', "")):
        proc = instance.run("enqueue", "--file", "-", input=batch, check=False)
        assert proc.returncode == 2 and "appears twice in one object" in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and (where in proc.stderr)
    assert len(instance.json("list")) == 6

BAD_INPUTS = [
    (["enqueue", "{not json"], 2, "malformed JSON job"),
    (["enqueue", "--command", ""], 2, "command is empty"),
    (["enqueue", "{}"], 2, "a job needs a command"),
    (["enqueue", '{"command": 5}'], 2, "command must be a string"),
    (["enqueue", '["echo"]'], 2, "must be an object"),
    (["enqueue", '{"command": "rm -rf /tmp/x", "command": "true"}'], 2, 'the key "command" appears twice in one object'),
    (["enqueue", '{"command": "true", "env": {"A": "1", "A": "2"}}'], 2, 'the key "A" appears twice'),
    (["enqueue", '{"id": "dup", "command": "true"}'], 1, "a job with id 'dup' already exists"),
    (["enqueue", '{"command": "true", "state": "completed"}'], 2, "field 'state' is set by queuectl"),
    (["enqueue", '{"command": "true", "attempts": 3}'], 2, "field 'attempts' is set by queuectl"),
    (["enqueue", '{"command": "true", "created_at": "x"}'], 2, "field 'created_at' is set by queuectl"),
    (["enqueue", '{"command": "true", "colour": "red"}'], 2, "unknown field 'colour'"),
    (["enqueue", "--command", "true", "--max-retries", "-1"], 2, "'--max-retries': must be an integer from 0 to 1000"),
    (["enqueue", "--command", "true", "--max-retries", "two"], 2, "'--max-retries': must be an integer"),
    (["enqueue", '{"command": "true", "max_retries": 1.5}'], 2, "max_retries must be an integer"),
    (["enqueue", '{"command": "true", "cwd": "/no/such/dir"}'], 2, "is not an existing folder"),
    (["enqueue", '{"command": "true", "executor": "nope"}'], 2, "unknown executor 'nope'"),
    (["show", "missing"], 1, "no job with id 'missing'"),
    (["logs", "missing"], 1, "no job with id 'missing'"),
    (["dlq", "retry", "missing"], 1, "no job with id 'missing'"),
    (["dlq", "retry", "dup"], 1, "job 'dup' is pending, not dead"),
    (["list", "--state", "sleeping"], 2, "'sleeping' is not one of 'pending'"),
    (["worker", "start", "--count", "0"], 2, "must be an integer from 1 to 1024"),
    (["config", "set", "colour", "red"], 2, "unknown config key 'colour'"),
    (["config", "get", "colour"], 2, "unknown config key 'colour'"),
    (["config", "set", "max-retries", "-2"], 2, "must be an integer from 0 to 1000"),
    (["config", "set", "max-retries", "many"], 2, "must be an integer from 0 to 1000"),
    (["config", "set", "db", "/tmp/elsewhere.db"], 2, "db can only be set in config.yaml"),
    (["config", "set", "plugins-dir", "/tmp"], 2, "plugins-dir can only be set in config.yaml"),
    (["--db", "/no/such/folder/q.db", "list"], 1, "the folder of the store /no/such/folder/q.db does not exist"),
    (["frobnicate"], 2, "No such command 'frobnicate'"),
]


@pytest.mark.parametrize("args,code,message", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_and_changes_nothing(instance, args, code, message):
    # The bad input goes through a real `queuectl` process; the store is set up and looked at
    # through the same CLI run in this process.
    assert instance.cli("enqueue", '{"id": "dup", "command": "true"}')[0] == 0
    before = instance.cli_json("list")
    proc = instance.run(*args, check=False)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("queuectl: error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert instance.cli_json("list") == before


def test_unreadable_and_invalid_config_files(instance):
    instance.config_path.write_text("max-retries: [1\n")
    proc = instance.run("list", check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "is not valid YAML" in proc.stderr and "line 2" in proc.stderr
    instance.config_path.write_text("colour: red\n")
    proc = instance.run("list", check=False)
    assert proc.returncode == 2 and "unknown key 'colour'" in proc.stderr
    instance.config_path.write_text("db: queue.db\nmax-retries: 3\nmax-retries: 0\n")   # which one was meant?
    proc = instance.run("list", check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "line 3 column 1 is not valid YAML: found the key 'max-retries' twice" in proc.stderr
    proc = instance.run("list", check=False, env={"QUEUECTL_CONFIG": str(instance.root / "missing.yaml")})
    assert proc.returncode == 1 and "cannot read config file" in proc.stderr
    instance.config_path.write_text("db: queue.db\n")
    instance.config_path.chmod(0o000)
    try:
        proc = instance.run("list", check=False, env={"QUEUECTL_CONFIG": str(instance.config_path)})
    finally:
        instance.config_path.chmod(0o644)
    import os
    if os.geteuid() != 0:   # root reads anything
        assert proc.returncode == 1 and "cannot read config file" in proc.stderr
    # A named config that never ends (a device, a pipe fed for ever) was read into memory until the
    # machine ran out; it is refused past 1 MiB. /dev/null and a pipe of a few lines still read.
    for endless in ("/dev/zero", "/dev/urandom"):
        proc = instance.run("--config", endless, "list", check=False, timeout=30)
        assert (proc.returncode, proc.stderr) == \
            (2, f"queuectl: error: config file {endless} is larger than 1 MiB: not a settings file\n")
    assert instance.run("--config", "/dev/null", "config", "get", "max-retries").stdout == "3\n"
    proc = subprocess.run(["bash", "-c", f"{' '.join(QUEUECTL)} --config <(printf 'max-retries: 7\\n') "
                                         f"config get max-retries"],
                          cwd=instance.root, env=instance.env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "7\n"), proc.stderr


def test_config_precedence_and_sources(instance):
    def entry(key, env=None):
        rows = json.loads(instance.run("config", "list", "--json", env=env).stdout)
        return next(r for r in rows if r["key"] == key)

    assert entry("kill-grace") == {**entry("kill-grace"), "value": 1, "source": "file"}
    assert entry("timeout")["source"] == "default"
    assert instance.run("config", "set", "kill-grace", "7").stdout.strip() == "kill-grace = 7.0"
    assert entry("kill-grace")["value"] == 7.0 and entry("kill-grace")["source"] == "store"
    assert instance.run("config", "get", "kill_grace").stdout.strip() == "7.0"
    over = entry("kill-grace", env={"QUEUECTL_KILL_GRACE": "9"})
    assert over["value"] == 9.0 and over["source"] == "env"
    instance.run("config", "unset", "kill-grace")
    assert entry("kill-grace")["source"] == "file"
    assert entry("db")["file_only"] is True
    assert entry("backoff-base")["plugin"] == "backoff"


def test_read_commands_have_json(instance):
    job_id = instance.enqueue("echo out")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    status = instance.json("status")
    assert status["counts"]["completed"] == 1 and status["store"]["backend"] == "sqlite"
    assert status["config_file"] == str(instance.config_path)
    stats = instance.json("stats")
    assert stats["total_runs"] == 1 and stats["failed_runs"] == 0 and stats["dead_jobs"] == 0
    assert {"avg_duration", "p50_duration", "p95_duration", "throughput"} <= set(stats)
    logs = instance.json("logs", job_id)
    assert [(l["attempt"], l["exit_code"], l["stdout"]) for l in logs] == [(1, 0, "out\n")]
    assert ISO.match(logs[0]["created_at"]) and logs[0]["duration"] >= 0
    assert instance.json("dlq", "list") == []
    assert {p["name"] for p in instance.json("plugins")} >= {"sqlite", "shell", "backoff", "dlq", "validate"}
    shown = instance.json("show", job_id)
    assert shown["id"] == job_id and shown["attempts"] == 1 and len(shown["history"]) == 1


def test_python_api_get_job_logs(instance, monkeypatch):
    job_id = instance.enqueue("echo api; exit 4", max_retries=0)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    from queuectl import get_job_logs

    logs = get_job_logs(job_id, config=str(instance.config_path))
    assert len(logs) == 1
    assert {k: logs[0][k] for k in ("job_id", "attempt", "exit_code", "stdout", "stderr")} == \
        {"job_id": job_id, "attempt": 1, "exit_code": 4, "stdout": "api\n", "stderr": ""}
    assert {"duration", "created_at"} <= set(logs[0])
    monkeypatch.setenv("QUEUECTL_DB", str(instance.root / "queue.db"))
    assert get_job_logs(job_id)[0]["exit_code"] == 4


def test_init_is_idempotent_and_store_is_private(instance):
    for _ in range(2):
        assert "store ready" in instance.run("init").stdout
    assert (instance.root / "queue.db").stat().st_mode & 0o777 == 0o600


def test_default_store_lives_in_the_user_data_folder(instance):
    instance.config_path.unlink()
    folder = instance.root / "xdg-data" / "queuectl"
    # Set but empty (`QUEUECTL_CONFIG="$CFG"` with CFG unset) is refused, not read as "look elsewhere".
    proc = instance.run("enqueue", "--command", "true", env={"QUEUECTL_CONFIG": ""}, check=False)
    assert (proc.returncode, proc.stderr) == (2, "queuectl: error: environment QUEUECTL_CONFIG: an empty path "
                                                 "(leave it out to look for config.yaml)\n")
    assert not folder.exists()
    env = {k: v for k, v in instance.env.items() if k != "QUEUECTL_CONFIG"}
    subprocess.run([*QUEUECTL, "enqueue", "--command", "true"], cwd=instance.root, env=env, check=True,
                   capture_output=True, timeout=60)
    assert (folder / "queue.db").exists()
    assert folder.stat().st_mode & 0o777 == 0o700


def _run_with_streams(instance, *args, stdout=subprocess.PIPE, closed=()) -> subprocess.CompletedProcess:
    """``queuectl *args`` with stdout as given and the descriptors ``closed`` closed, as `<&-` does."""
    return subprocess.run([*QUEUECTL, *args], cwd=instance.root, env=instance.env, text=True,
                          stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, timeout=60,
                          preexec_fn=lambda: [os.close(fd) for fd in closed])


def test_a_full_or_closed_standard_stream_is_one_line_and_harms_nothing(instance):
    # Output that cannot be written (stdout on a full disk: /dev/full) is one line on stderr and exit 1,
    # never a traceback; a job enqueued before its id could be printed is kept. A closed stdin or
    # stdout (`<&-`, `>&-`) is read as /dev/null: no traceback, and nothing queuectl opens later (the
    # store) can take its descriptor.
    first = instance.enqueue("echo first")
    with open("/dev/full", "w") as full:
        for args in (["list"], ["list", "--json"], ["show", first], ["stats"], ["status"],
                     ["enqueue", "echo second"]):
            proc = _run_with_streams(instance, *args, stdout=full)
            assert proc.returncode == 1, (args, proc.stderr)
            assert proc.stderr == "queuectl: error: cannot write the output: No space left on device\n", args
    assert [j["command"] for j in instance.json("list")] == ["echo first", "echo second"]

    proc = _run_with_streams(instance, "enqueue", "--file", "-", closed=[0])
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "", "")
    proc = _run_with_streams(instance, "enqueue", "echo third", closed=[1])
    assert (proc.returncode, proc.stderr) == (0, "")
    assert [j["command"] for j in instance.json("list")] == ["echo first", "echo second", "echo third"]
    assert instance.run("status").returncode == 0


def test_ctrl_c_at_any_moment_of_the_start_is_an_exit_not_a_traceback(instance):
    """SIGINT sent 0 to 150 ms into a command's life, through both ways of starting it, so that the
    start-up (interpreter, imports, the store) is interrupted at every stage on the way. Each ends as
    killed by the signal (before Python takes it), 130 or done (0), and never with a traceback through
    queuectl's modules: from the first line queuectl runs (queuectl/__main__.py) a Ctrl-C is an exit.
    Before it only CPython's own start-up (site, runpy, the console script's first imports) and the
    package's two first modules (queuectl/__init__.py importing errors.py) can be interrupted, and
    print CPython's traceback: no code of the program runs there to catch it."""
    import signal
    import sys
    import time

    instance.checked_cli("init")
    script = os.path.join(os.path.dirname(sys.executable), "queuectl")
    starts = [list(QUEUECTL)] + ([[script]] if os.access(script, os.X_OK) else [])
    ours = re.compile(r'File "[^"]*/queuectl/(?!__init__\.py"|errors\.py")[^"]*"')
    for argv in starts:
        for delay_ms in range(0, 151, 10):
            proc = subprocess.Popen([*argv, "status"], cwd=instance.root, env=instance.env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(delay_ms / 1000)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert not ours.search(err), (argv, delay_ms, err)
            # (CPython's own start-up, interrupted, prints its traceback, or before any Python frame
            # exists "Fatal Python error: init_sys_streams ... KeyboardInterrupt" and exits 1)
            before_python = "Fatal Python error" in err and "<no Python frame>" in err
            assert proc.returncode in (0, 130, -signal.SIGINT) or "Traceback" in err or before_python, \
                (argv, delay_ms, proc.returncode, err)
