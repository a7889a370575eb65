"""The built-ins are ordinary plugins: replaceable, blockable, and the core does not depend on them."""
import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT

CORE_MODULES = sorted(p for p in (ROOT / "queuectl").glob("*.py"))
FORBIDDEN = {"sqlite3", "subprocess", "watchdog", "psycopg"}


def imported_names(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_modules_do_not_import_backends_or_subprocess(path):
    assert not imported_names(path) & FORBIDDEN


def test_core_runtime_imports_none_of_them():
    code = ("import sys; import queuectl, queuectl.queue, queuectl.worker, queuectl.cli, queuectl.config, "
            "queuectl.plugins, queuectl.store, queuectl.executor; "
            f"print(sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def write_plugin(instance, name: str, source: str) -> Path:
    path = instance.plugins / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    path.chmod(0o644)
    return path


REPLACEMENT_EXECUTOR = '''
import os, time
from queuectl import hookimpl, ExecResult

class Done:
    """Runs the command "in Python": writes it to a file; proves the shell executor was not used."""
    def __init__(self, job, ctx):
        self.pid = self.pgid = None
        with open(os.path.join(job.cwd, "ran.txt"), "a") as fh:
            fh.write(f"{ctx.env['QUEUECTL_JOB_ID']}:{ctx.env['QUEUECTL_ATTEMPT']}:{job.command}\\n")
    def wait(self, timeout):
        return ExecResult("succeeded", exit_code=0, stdout=b"python executor")
    def stop(self, grace, outcome, reason):
        return ExecResult(outcome, error=reason)

class PythonExecutor:
    def start(self, job, ctx):
        return Done(job, ctx)
    def reap(self, job, lease):
        return 0

@hookimpl
def queuectl_register_executors(register):
    register("shell", PythonExecutor())
'''


def test_blocked_shell_executor_is_replaced_by_a_plugin_end_to_end(instance):
    instance.write_config(dict(instance.config, **{"disable-plugins": ["shell"]}))
    write_plugin(instance, "pyexec", REPLACEMENT_EXECUTOR)
    ids = [instance.enqueue(f"echo {n}") for n in range(3)]
    assert instance.start_pool(2, "--burst").wait(timeout=60) == 0
    lines = (instance.root / "ran.txt").read_text().splitlines()
    assert sorted(lines) == sorted(f"{i}:1:echo {n}" for n, i in enumerate(ids))
    for job_id in ids:
        job = instance.job(job_id)
        assert job["state"] == "completed"
        assert job["history"][0]["stdout"] == "python executor"
    names = {p["name"]: p for p in instance.json("plugins")}
    assert "shell" not in names or names["shell"]["origin"] != "builtin"
    assert names["pyexec"]["hooks"] == ["queuectl_register_executors"]


def test_two_executors_with_one_name_is_an_error(instance):
    write_plugin(instance, "pyexec", REPLACEMENT_EXECUTOR)
    proc = instance.run("enqueue", "--command", "true", check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "executor 'shell' is registered twice" in proc.stderr


def test_validation_plugin_in_plugins_folder_runs_on_plain_enqueue(instance):
    write_plugin(instance, "no_sudo", '''
        from queuectl import hookimpl, JobValidationError

        @hookimpl
        def queuectl_validate_job(job, queue):
            if job["command"].startswith("sudo "):
                raise JobValidationError("sudo is not allowed in jobs")
    ''')
    refused = instance.run("enqueue", "--command", "sudo reboot", check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "queuectl: error: sudo is not allowed in jobs"
    assert instance.json("list") == []
    instance.run("enqueue", "--command", "echo fine")
    assert len(instance.json("list")) == 1


def test_notification_plugin_sees_every_attempt(instance):
    write_plugin(instance, "recorder", '''
        import json, os
        from queuectl import hookimpl

        def note(queue, **fields):
            with open(os.path.join(os.path.dirname(queue.config.path), "events.jsonl"), "a") as fh:
                fh.write(json.dumps(fields) + "\\n")

        @hookimpl
        def queuectl_attempt_started(job, attempt, queue):
            note(queue, event="started", job=job.id, attempt=attempt)

        @hookimpl
        def queuectl_attempt_finished(job, attempt, queue):
            note(queue, event="finished", job=job.id, attempt=attempt.attempt, state=job.state)

        @hookimpl
        def queuectl_job_dead(job, attempt, queue):
            note(queue, event="dead", job=job.id, attempt=attempt.attempt)

    ''')
    ok = instance.enqueue("true")
    bad = instance.enqueue("exit 1", max_retries=2)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    events = [json.loads(l) for l in (instance.root / "events.jsonl").read_text().splitlines()]
    assert [e for e in events if e["job"] == ok] == [
        {"event": "started", "job": ok, "attempt": 1},
        {"event": "finished", "job": ok, "attempt": 1, "state": "completed"}]
    assert [e for e in events if e["job"] == bad] == [
        {"event": "started", "job": bad, "attempt": 1},
        {"event": "finished", "job": bad, "attempt": 1, "state": "failed"},
        {"event": "started", "job": bad, "attempt": 2},
        {"event": "finished", "job": bad, "attempt": 2, "state": "failed"},
        {"event": "started", "job": bad, "attempt": 3},
        {"event": "finished", "job": bad, "attempt": 3, "state": "dead"},
        {"event": "dead", "job": bad, "attempt": 3}]


def test_a_failing_reporter_never_fails_the_job(instance):
    write_plugin(instance, "broken", '''
        from queuectl import hookimpl

        @hookimpl
        def queuectl_attempt_finished(job, attempt):
            raise RuntimeError("reporter is down")
    ''')
    job_id = instance.enqueue("true")
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=60) == 0
    assert "plugin broken failed in queuectl_attempt_finished: RuntimeError: reporter is down" in pool.stderr.read()
    assert instance.job(job_id)["state"] == "completed"


def test_plugins_folder_writable_by_others_is_refused(instance):
    path = write_plugin(instance, "harmless", "x = 1\n")
    path.chmod(0o666)
    proc = instance.run("list", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"queuectl: error: refusing plugins path {path}: other users can write it (run: chmod go-w {path})"
    path.chmod(0o644)
    instance.plugins.chmod(0o777)
    proc = instance.run("list", check=False)
    assert proc.returncode == 1 and "other users can write it" in proc.stderr
    instance.plugins.chmod(0o755)
    assert instance.run("list").returncode == 0


def test_plugin_owned_by_another_user_is_refused(instance):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = write_plugin(instance, "theirs", "x = 1\n")
    os.chown(path, 65534, 65534)
    proc = instance.run("list", check=False)
    assert proc.returncode == 1
    assert "owned by another user" in proc.stderr


def test_entry_point_plugin_is_loaded_and_listed(instance, tmp_path):
    site = tmp_path / "site"
    pkg = site / "qc_hello"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import click
        from queuectl import hookimpl

        @hookimpl
        def queuectl_register_commands(cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from an entry point")
    '''))
    dist = site / "qc_hello-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qc-hello\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[queuectl]\nhello = qc_hello\n")
    env = {"PYTHONPATH": str(site)}
    assert instance.run("hello", env=env).stdout == "hello from an entry point\n"
    plugins = {p["name"]: p for p in json.loads(instance.run("plugins", "--json", env=env).stdout)}
    assert plugins["hello"]["origin"] == "entry point qc_hello"
    assert plugins["hello"]["hooks"] == ["queuectl_register_commands"]
    assert {"sqlite", "shell", "backoff", "dlq", "validate"} <= set(plugins)
    assert all(plugins[n]["origin"] == "builtin" for n in ("sqlite", "shell", "backoff", "dlq", "validate"))


def test_repository_example_plugin_writes_the_audit_log(instance):
    (instance.plugins / "audit_log.py").write_text((ROOT / "plugins" / "audit_log.py").read_text())
    instance.write_config(dict(instance.config, **{"audit-log": "audit.jsonl"}))
    job_id = instance.enqueue("exit 3", max_retries=0)
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    entries = [json.loads(l) for l in (instance.root / "audit.jsonl").read_text().splitlines()]
    assert len(entries) == 1
    assert entries[0]["job_id"] == job_id and entries[0]["exit_code"] == 3 and entries[0]["state"] == "dead"
    assert "audit-log" in instance.run("status").stdout


def test_group_writable_plugin_is_refused_unless_the_group_is_ours_alone(instance):
    import grp
    import pwd

    path = write_plugin(instance, "shared", "x = 1\n")
    path.chmod(0o664)
    me = pwd.getpwuid(os.geteuid()).pw_name
    gid = os.getegid()
    private = not (set(grp.getgrgid(gid).gr_mem) - {me}) and \
        not [u for u in pwd.getpwall() if u.pw_gid == gid and u.pw_name != me]
    proc = instance.run("list", check=False)
    assert proc.returncode == (0 if private else 1), proc.stderr     # umask 002 on a user-private group
    if os.geteuid() != 0:
        return                                                        # changing a file's group needs root
    os.chown(path, -1, 65534)                                         # a group we are not alone in
    proc = instance.run("list", check=False)
    assert proc.returncode == 1 and "other users can write it" in proc.stderr


def test_builtins_use_the_plugin_surface_not_the_cli_or_worker():
    """Built-in plugins (and the example distributions) are ordinary plugins: they use
    queuectl.command and queuectl.process, the documented surface, never the CLI's or the worker's internals."""
    offenders = {}
    for path in sorted((ROOT / "queuectl" / "builtin").glob("*.py")) + sorted((ROOT / "plugins").glob("*.py")) + \
            sorted((ROOT / "examples").rglob("*.py")):
        modules = {node.module for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.ImportFrom) and node.module}
        modules |= {alias.name for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Import) for alias in node.names}
        bad = modules & {"queuectl.cli", "queuectl.worker"}
        if bad:
            offenders[path.name] = bad
    assert offenders == {}
