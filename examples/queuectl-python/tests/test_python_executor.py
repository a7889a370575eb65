"""queuectl-python through the installed CLI and real workers (install first: pip install .)."""
from __future__ import annotations

import json
import os
import signal
import textwrap

import pytest

from conftest import wait_until

TASKS = textwrap.dedent('''
    import os, subprocess, sys, time
    from queuectl_python import task

    @task(max_retries=0)
    def resize(path, width=100):
        print(f"resizing {path} to {width}")
        print("to stderr", file=sys.stderr)
        return {"path": path, "width": width}

    @task(max_retries=0)
    def explode(message):
        raise RuntimeError(message)

    @task(max_retries=0)
    def crash():
        os.abort()

    CONSTANT = 42

    @task(max_retries=0)
    def segfault():
        import ctypes
        ctypes.string_at(0)                     # reads address 0: SIGSEGV

    @task(max_retries=0)
    def stubborn():
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(300)

    @task(max_retries=0)
    def chatty(mib):
        chunk = "x" * (1 << 20)
        for _ in range(mib):
            sys.stdout.write(chunk)
        print("the end")

    @task(max_retries=0)
    def linger(seconds):
        subprocess.Popen(["sleep", "300"], start_new_session=True)   # escapes the group: still stopped
        print("started", flush=True)
        time.sleep(seconds)
''')


def tagged(job_id):
    """Live processes of this job (they carry QUEUECTL_JOB_ID in their environment)."""
    needle = f"\0QUEUECTL_JOB_ID={job_id}\0".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in b"\0" + fh.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def delay(instance, call):
    (instance.root / "tasks.py").write_text(TASKS)
    return instance.python(f"import tasks; print(tasks.{call})").strip()


def test_the_executor_is_found_through_its_entry_point(instance):
    plugins = {p["name"]: p for p in instance.json("plugins")}
    assert plugins["python"]["origin"] == "entry point queuectl_python.plugin"
    assert "queuectl_register_executors" in plugins["python"]["hooks"]


def test_task_delay_runs_the_function_in_a_worker_with_its_output(instance):
    job_id = delay(instance, 'resize.delay("cat.png", width=200)')
    job = instance.json("show", job_id)
    assert (job["executor"], job["command"], job["args"], job["kwargs"]) == \
        ("python", "tasks:resize", ["cat.png"], {"width": 200})
    instance.start_pool(2)
    assert instance.wait_for_state(job_id, "completed", "dead")["state"] == "completed"
    [log] = instance.json("logs", job_id)
    assert log["stdout"].splitlines() == ["resizing cat.png to 200", json.dumps({"path": "cat.png", "width": 200})]
    assert log["stderr"] == "to stderr\n"


def test_an_exception_fails_the_attempt_with_its_traceback(instance):
    job_id = delay(instance, 'explode.delay("boom")')
    instance.start_pool()
    job = instance.wait_for_state(job_id, "dead")
    assert job["exit_code"] == 1
    [log] = instance.json("logs", job_id)
    assert "RuntimeError: boom" in log["stderr"] and "Traceback" in log["stderr"]


@pytest.mark.parametrize("call, sig", [("crash.delay()", signal.SIGABRT), ("segfault.delay()", signal.SIGSEGV)])
def test_a_crash_is_a_death_by_signal(instance, call, sig):
    job_id = delay(instance, call)          # os.abort(), and a read of address 0
    instance.start_pool()
    instance.wait_for_state(job_id, "dead")
    [log] = instance.json("logs", job_id)
    assert log["signal"] == sig and log["exit_code"] is None


def test_timeout_stops_the_function_and_what_it_started(instance):
    job_id = delay(instance, "linger.enqueue(args=[300], timeout=1)")
    instance.start_pool()
    instance.wait_for_state(job_id, "dead")
    [log] = instance.json("logs", job_id)
    assert log["outcome"] == "timed_out" and log["stdout"] == "started\n"
    assert tagged(job_id) == []


def test_cancel_stops_a_running_function_and_what_it_started(instance):
    job_id = delay(instance, "linger.delay(300)")
    instance.start_pool()
    wait_until(lambda: len(tagged(job_id)) >= 2, message="the function and its grandchild to run")
    instance.run("cancel", job_id)
    assert instance.wait_for_state(job_id, "cancelled")["state"] == "cancelled"
    wait_until(lambda: tagged(job_id) == [], 10, message="every process of the job to be gone")


def test_python_jobs_are_validated_when_enqueued(instance):
    bad = instance.run("enqueue", json.dumps({"command": "not a function", "executor": "python"}), check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == \
        "queuectl: error: a python job's command is module:function, got 'not a function'"
    bad = instance.run("enqueue", json.dumps({"command": "echo", "args": [1]}), check=False)
    assert bad.returncode == 2 and "args and kwargs are for python jobs" in bad.stderr
    bad = instance.run("enqueue", json.dumps({"command": "m:f", "executor": "python", "kwargs": [1]}), check=False)
    assert bad.returncode == 2 and "kwargs: expected a JSON object" in bad.stderr
    assert instance.json("list") == []


def test_a_task_of_a_script_is_imported_by_its_file_name(instance):
    (instance.root / "nightly.py").write_text(textwrap.dedent('''
        import sys
        from queuectl_python import task

        @task
        def report(code):
            print("report ran")
            sys.exit(code)

        if __name__ == "__main__":
            print(report.delay(3))
    '''))
    job_id = instance.python("import runpy; runpy.run_path('nightly.py', run_name='__main__')").strip()
    assert instance.json("show", job_id)["command"] == "nightly:report"
    instance.start_pool()
    job = instance.wait_for_state(job_id, "dead", "completed")
    assert (job["state"], job["exit_code"]) == ("dead", 3)
    assert instance.json("logs", job_id)[-1]["stdout"] == "report ran\n"


def test_a_function_that_ignores_sigterm_is_killed_at_the_timeout_plus_kill_grace(instance):
    job_id = delay(instance, "stubborn.enqueue(timeout=1)")
    instance.start_pool()
    wait_until(lambda: tagged(job_id), message="the function to run")
    instance.wait_for_state(job_id, "dead")
    [log] = instance.json("logs", job_id)
    assert (log["outcome"], log["signal"], log["stdout"]) == ("timed_out", signal.SIGKILL, "ignoring SIGTERM\n")
    assert tagged(job_id) == []


def test_100_mib_of_output_is_kept_within_output_cap(instance):
    job_id = delay(instance, "chatty.delay(100)")
    instance.start_pool()
    assert instance.wait_for_state(job_id, "completed", "dead")["state"] == "completed"
    [log] = instance.json("logs", job_id)
    stdout = log["stdout"]
    assert len(stdout.encode()) < (1 << 20) + 200                 # output-cap (1 MiB) and its marker
    assert stdout.startswith("x" * 1000) and stdout.endswith("x" * 1000 + "the end\n")


def test_a_missing_module_a_missing_function_and_a_non_callable_are_one_line_each(instance):
    (instance.root / "tasks.py").write_text(TASKS)
    expected = {
        "nowhere_to_be_found:run": "cannot import 'nowhere_to_be_found': No module named 'nowhere_to_be_found'",
        "tasks:vanished": "tasks:vanished: tasks has no attribute 'vanished'",
        "tasks:CONSTANT": "tasks:CONSTANT is not callable: 42",
    }
    jobs = {target: instance.run("enqueue", json.dumps({"executor": "python", "command": target,
                                                         "max_retries": 0})).stdout.strip() for target in expected}
    instance.start_pool()
    for target, message in expected.items():
        job = instance.wait_for_state(jobs[target], "dead")
        [log] = instance.json("logs", jobs[target])
        assert (job["exit_code"], log["stderr"]) == (1, f"queuectl-python: {message}\n")


def test_arguments_json_cannot_carry_are_refused_when_enqueued(instance):
    (instance.root / "tasks.py").write_text(TASKS)
    out = instance.python(textwrap.dedent('''
        import tasks
        from queuectl import JobValidationError
        for call in (lambda: tasks.resize.delay(object()), lambda: tasks.resize.delay(float("nan")),
                     lambda: tasks.resize.delay("a", width={1, 2}), lambda: tasks.resize.delay(b"bytes")):
            try:
                call()
                print("accepted")
            except JobValidationError as exc:
                print(exc)
    '''))
    assert out.splitlines() == [
        "args: not JSON: Object of type object is not JSON serializable",
        "args: not JSON: Out of range float values are not JSON compliant",
        "kwargs: not JSON: Object of type set is not JSON serializable",
        "args: not JSON: Object of type bytes is not JSON serializable"]
    bad = instance.run("enqueue", json.dumps({"executor": "python", "command": "tasks:resize", "args": "cat.png"}),
                       check=False)
    assert (bad.returncode, bad.stderr) == (2, "queuectl: error: args: expected a JSON array, got str\n")
    assert instance.json("list") == []
