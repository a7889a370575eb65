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
    instance.run("init")                       # list is a read command: it never creates the store
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
    instance.run("init")                       # list is a read command: it never creates the store
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


#: What a plugin must never import: the CLI's internals and the worker (docs/hooks.md, the plugin surface).
NOT_FOR_PLUGINS = ("queuectl.cli", "queuectl.cli_more", "queuectl.worker")
IMPORT_CALLS = {"import_module", "__import__", "LazyImport"}


def imported_modules(source: str, module: str) -> set:
    """Every module a plugin's source imports, anywhere in it (inside functions too), as absolute
    names: ``import a.b``, ``from a import b`` (``a`` and ``a.b``: b may be a module), relative
    imports resolved against ``module``, and ``importlib.import_module``/``__import__``/``LazyImport``
    calls (a name built at run time is kept as its constant prefix and a trailing ``*``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:-node.level]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and \
                getattr(node.func, "id", getattr(node.func, "attr", None)) in IMPORT_CALLS:
            name = node.args[0]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.add(name.value)
            else:
                first = name.values[0] if isinstance(name, ast.JoinedStr) and name.values else None
                found.add((first.value if isinstance(first, ast.Constant) else "") + "*")
    return found


def forbidden(modules: set) -> set:
    """The imports among ``modules`` that are, or could be (a run-time name), the CLI or the worker."""
    def bad(name: str) -> bool:
        if name.endswith("*"):
            prefix = name[:-1]
            # A name wholly built at run time (the python example imports the user's module) is the
            # user's; one whose constant part could still become the CLI or the worker is not.
            return bool(prefix) and any(f.startswith(prefix) or prefix.startswith(f + ".") for f in NOT_FOR_PLUGINS)
        return any(name == f or name.startswith(f + ".") for f in NOT_FOR_PLUGINS)
    return {name for name in modules if bad(name)}


def plugin_sources() -> dict:
    """Every plugin the project ships, by its module name: the built-ins (subpackages too), the
    plugins folder, the example distributions (their tests too) and the docs/hooks.md walkthrough."""
    sources = {}
    for path in sorted((ROOT / "queuectl" / "builtin").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.read_text()
    for path in sorted((ROOT / "plugins").glob("*.py")):
        sources[f"queuectl_local_plugins.{path.stem}"] = path.read_text()
    for path in sorted((ROOT / "examples").rglob("*.py")):
        if {"build", ".venv"} & set(path.relative_to(ROOT).parts):
            continue                               # what pip or a developer built there
        parts = path.relative_to(ROOT / "examples").with_suffix("").parts[1:]
        sources[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path.read_text()
    from test_examples import walkthrough_files

    sources["queuectl_batch"] = walkthrough_files()["queuectl_batch.py"]
    return sources


def test_builtins_use_the_plugin_surface_not_the_cli_or_worker():
    """Built-in plugins (and the examples) are ordinary plugins: they use queuectl.command and
    queuectl.process, the documented surface, never the CLI's or the worker's internals."""
    sources = plugin_sources()
    assert {"queuectl.builtin.dlq", "queuectl.builtin.schedule", "queuectl.builtin.spool",
            "queuectl.builtin.web.app", "queuectl_python.plugin", "queuectl_slack", "queuectl_batch"} <= set(sources)
    offenders = {name: forbidden(imported_modules(source, name)) for name, source in sources.items()}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
    users = {name for name, source in sources.items() if "queuectl.command" in imported_modules(source, name)}
    assert {"queuectl.builtin.dlq", "queuectl.builtin.schedule", "queuectl.builtin.spool"} <= users
    assert "queuectl.process" in imported_modules(sources["queuectl.builtin.spool"], "queuectl.builtin.spool")


@pytest.mark.parametrize("source", [
    "import queuectl.cli",
    "import queuectl.worker as w",
    "from queuectl import cli",
    "from queuectl import worker",
    "from queuectl.cli import get_queue",
    "from queuectl.cli_more import worker_start",
    "from .. import cli",
    "from ..worker import log",
    "def later():\n    from queuectl.cli import table\n    return table",
    "def later():\n    import importlib\n    return importlib.import_module('queuectl.cli')",
    "w = __import__('queuectl.worker')",
    "from queuectl._lazy import LazyImport\ncli = LazyImport('queuectl.cli', globals())",
    "import importlib\nname = 'cli'\nmod = importlib.import_module(f'queuectl.{name}')",
], ids=lambda s: s.splitlines()[-1].strip()[:40])
def test_the_import_check_catches_every_way_to_reach_the_cli_or_worker(source):
    assert forbidden(imported_modules(source, "queuectl.builtin.example"))


@pytest.mark.parametrize("source", [
    "from queuectl.command import get_queue",
    "from queuectl import process, hookimpl",
    "from . import _rows",
    "import importlib\nm = importlib.import_module(f'queuectl.builtin.web.{1}')",
], ids=lambda s: s.splitlines()[-1].strip()[:40])
def test_the_import_check_lets_the_surface_through(source):
    assert not forbidden(imported_modules(source, "queuectl.builtin.example"))


def test_loading_every_builtin_imports_neither_the_cli_nor_the_worker():
    """At run time too: importing each built-in module (and what it imports) loads neither."""
    names = [n for n in plugin_sources() if n.startswith("queuectl.builtin")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m in {NOT_FOR_PLUGINS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
