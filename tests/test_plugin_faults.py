"""Third-party plugins that misbehave, through the real CLI and real pools: a plugin that raises in
any hook, answers with the wrong type, takes a name that is taken, or cannot be imported gets one
line naming it (never a traceback), and nothing queued is harmed: a job enqueued before the plugin
came is still there, untouched, or runs to the state it would have reached without the plugin."""
from __future__ import annotations

import json
import textwrap

import pytest

from test_plugins import write_plugin

#: hook -> what the commands that meet it do: refuse (a plugin that cannot register or add its worker
#: options stops every command before it changes anything; one that cannot validate stops enqueueing),
#: or go on with a warning line (reports, job sources, the retry policy, status sections).
RAISING = {
    "queuectl_register_settings(register)": "refuses",
    "queuectl_register_executors(register)": "refuses",
    "queuectl_register_job_fields(register)": "refuses",
    "queuectl_register_storage(register)": "refuses",
    "queuectl_register_commands(cli)": "refuses",
    "queuectl_worker_options()": "refuses",
    "queuectl_validate_job(job)": "refuses to enqueue",
    "queuectl_register_notifiers(register)": "warns",
    "queuectl_status_info(queue)": "warns",
    "queuectl_job_sources(queue)": "warns",
    "queuectl_retry_decision(job)": "warns",
    "queuectl_attempt_started(job)": "warns",
    "queuectl_attempt_finished(job)": "warns",
    "queuectl_job_dead(job)": "warns",
}


def one_line_each(text: str, needle: str) -> None:
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if needle in line]
    assert lines, text
    assert all(line.startswith("queuectl: ") for line in lines), text


@pytest.mark.parametrize("signature", RAISING, ids=lambda s: s.split("(")[0].replace("queuectl_", ""))
def test_a_plugin_that_raises_in_a_hook_is_one_line_and_harms_nothing_queued(instance, signature):
    hook = signature.split("(")[0]
    # Set up and looked at before the plugin exists through the CLI run in this process (no start-up each).
    ok = instance.cli("enqueue", json.dumps({"command": "echo fine"}))[1].strip()
    bad = instance.cli("enqueue", json.dumps({"command": "exit 3", "max_retries": 1}))[1].strip()
    before = {job_id: instance.cli_json("show", job_id) for job_id in (ok, bad)}
    write_plugin(instance, "clumsy", f'''
        from queuectl import hookimpl

        @hookimpl
        def {signature}:
            raise RuntimeError("clumsy broke in {hook}")
    ''')
    def look(job_id):                          # reads without the plugin: some of them refuse every command
        return instance.cli_json("show", job_id, env={"QUEUECTL_DISABLE_PLUGINS": "clumsy"})
    needle = f"plugin clumsy failed in {hook}: RuntimeError: clumsy broke in {hook}"
    enqueue = instance.run("enqueue", "--command", "true", check=False)
    pool = instance.run("worker", "start", "--burst", check=False)
    status = instance.run("status", check=False)
    if RAISING[signature] == "refuses":
        assert pool.returncode == 1 and pool.stderr.count("\n") == 1, pool.stderr
        assert pool.stderr.startswith(f"queuectl: error: {needle} (to run without it: "
                                      f"QUEUECTL_DISABLE_PLUGINS=clumsy, or disable-plugins: [clumsy]")
        assert {job_id: look(job_id) for job_id in (ok, bad)} == before
        if hook not in ("queuectl_register_commands", "queuectl_worker_options"):    # needed by worker start only
            assert enqueue.returncode == 1 and needle in enqueue.stderr
            assert enqueue.stdout == ""
            assert len(instance.cli_json("list", env={"QUEUECTL_DISABLE_PLUGINS": "clumsy"})) == 2
        calm = instance.run("worker", "start", "--burst", env={"QUEUECTL_DISABLE_PLUGINS": "clumsy"})
        assert calm.returncode == 0
    elif RAISING[signature] == "refuses to enqueue":
        assert (enqueue.returncode, enqueue.stdout) == (1, "") and enqueue.stderr.count("\n") == 1
        assert enqueue.stderr.startswith(f"queuectl: error: {needle} (to run without it:")
        assert pool.returncode == 0 and status.returncode == 0 and len(instance.json("list")) == 2
    else:
        assert enqueue.returncode == 0 and pool.returncode == 0, pool.stderr
        one_line_each(pool.stderr + status.stderr, needle)
        assert status.returncode == 0
    assert look(ok)["state"] == "completed"
    dead = look(bad)
    assert (dead["state"], dead["attempts"], dead["exit_code"]) == ("dead", 2, 3)     # its retry was not lost


WRONG = '''
from queuectl import ExecResult, RetryDecision, hookimpl

class Raises:
    def start(self, job, ctx):
        raise RuntimeError("no engine")
    def reap(self, job, lease):
        return 0

class NoRun(Raises):
    def start(self, job, ctx):
        return None

class StrangeRun:
    pid = pgid = None
    def wait(self, timeout):
        return "done, I think"
    def stop(self, grace, outcome, reason):
        return ExecResult(outcome, error=reason)

class Strange(Raises):
    def start(self, job, ctx):
        return StrangeRun()

@hookimpl
def queuectl_register_executors(register):
    register("raises", Raises())
    register("norun", NoRun())
    register("strange", Strange())

@hookimpl
def queuectl_retry_decision(job, attempt):
    return "retry, please" if job.command == "exit 5" else RetryDecision(True, delay=float("nan"))

@hookimpl
def queuectl_status_info(queue):
    return ["not", "a", "dict"]

@hookimpl
def queuectl_job_sources(queue, options):
    return "a source"
'''


def test_wrong_answers_from_a_plugin_are_one_line_and_the_jobs_end_as_without_it(instance):
    write_plugin(instance, "odd", WRONG)
    jobs = {name: instance.enqueue("x", executor=name, max_retries=0) for name in ("raises", "norun", "strange")}
    retried = instance.enqueue("exit 5", max_retries=1)
    nan = instance.enqueue("exit 6", max_retries=1)
    pool = instance.run("worker", "start", "--burst")
    assert "Traceback" not in pool.stderr
    errors = {name: instance.job(job_id)["last_error"] for name, job_id in jobs.items()}
    assert errors["raises"].endswith("could not start: executor 'raises' failed: RuntimeError: no engine")
    assert errors["norun"].endswith("executor 'norun' failed: AttributeError: 'NoneType' object has no attribute 'wait'")
    assert errors["strange"].endswith("executor 'strange' failed: TypeError: its run returned str, not an ExecResult")
    assert all(instance.job(j)["state"] == "dead" for j in jobs.values())
    for job_id in (retried, nan):        # the policy's nonsense is passed over: the built-in backoff decides
        job = instance.job(job_id)
        assert (job["state"], job["attempts"]) == ("dead", 2)
    assert "plugin odd failed in queuectl_retry_decision: TypeError: returned 'retry, please', not a " \
           "RetryDecision with a finite delay; asking the next retry policy" in pool.stderr
    assert "plugin odd failed in queuectl_job_sources: TypeError: returned 'a source'" in pool.stderr
    status = instance.run("status")
    assert "plugin odd failed in queuectl_status_info: TypeError: returned list, not a dict of sections" in status.stderr


def test_an_executor_that_is_not_one_or_worker_options_that_are_not_options_are_refused(instance):
    job_id = instance.enqueue("true")
    write_plugin(instance, "odd", '''
        from queuectl import hookimpl

        @hookimpl
        def queuectl_register_executors(register):
            register("text", "not an executor")
    ''')
    proc = instance.run("worker", "start", "--burst", check=False)
    assert (proc.returncode, proc.stderr) == (1, "queuectl: error: executor 'text' of plugin odd has no start() "
                                                 "and reap() methods\n")
    write_plugin(instance, "odd", '''
        from queuectl import hookimpl

        @hookimpl
        def queuectl_worker_options():
            return "--fast"
    ''')
    proc = instance.run("worker", "start", "--burst", check=False)
    assert (proc.returncode, proc.stderr) == (1, "queuectl: error: plugin odd failed in queuectl_worker_options: "
                                                 "returned '--fast', not a list of click.Option\n")
    assert instance.job(job_id)["state"] == "pending" and instance.job(job_id)["attempts"] == 0


@pytest.mark.parametrize("name, owner", [("list", "the core"), ("retry", "the core"), ("dlq", None)])
def test_a_command_name_that_is_taken_is_one_line(instance, name, owner):
    write_plugin(instance, "greedy", f'''
        import click
        from queuectl import hookimpl

        @hookimpl
        def queuectl_register_commands(cli):
            @cli.command({name!r})
            def mine():
                click.echo("greedy's")
    ''')
    proc = instance.run("worker", "start", "--burst", check=False)
    owners = f"{owner} and plugin greedy" if owner else "plugin greedy and plugin dlq"    # (a plugin's are asked first)
    assert (proc.returncode, proc.stderr) == (1, f"queuectl: error: command {name!r} is registered twice (by "
                                                 f"{owners}); block one with disable-plugins\n")
    assert "greedy's" not in instance.run("dlq", "list", check=False).stdout


def test_two_plugins_with_one_command_name_is_one_line(instance):
    for plugin in ("first", "second"):
        write_plugin(instance, plugin, f'''
            import click
            from queuectl import hookimpl

            @hookimpl
            def queuectl_register_commands(cli):
                @cli.command("deploy")
                def deploy():
                    click.echo({plugin!r})
        ''')
    proc = instance.run("deploy", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("queuectl: error: command 'deploy' is registered twice (by plugin ")


def test_an_entry_point_that_fails_to_import_is_one_line_and_can_be_switched_off(instance, tmp_path):
    job_id = instance.enqueue("echo still here")
    site = tmp_path / "site"
    (site / "qc_broken").mkdir(parents=True)
    (site / "qc_broken" / "__init__.py").write_text("import a_module_nobody_installed\n")
    dist = site / "qc_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qc-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[queuectl]\nbroken = qc_broken\n")
    env = {"PYTHONPATH": str(site)}
    for args in (("list",), ("worker", "start", "--burst"), ("enqueue", "true"), ("plugins",)):
        proc = instance.run(*args, env=env, check=False)
        assert (proc.returncode, proc.stdout) == (1, ""), args
        assert proc.stderr == ("queuectl: error: plugin broken (qc_broken) failed to load: ModuleNotFoundError: "
                               "No module named 'a_module_nobody_installed' (to run without it: "
                               "QUEUECTL_DISABLE_PLUGINS=broken, or disable-plugins: [broken] in config.yaml)\n")
    assert instance.job(job_id)["state"] == "pending"
    env["QUEUECTL_DISABLE_PLUGINS"] = "broken"
    instance.run("worker", "start", "--burst", env=env)
    assert instance.job(job_id)["state"] == "completed"
    assert "broken" not in {p["name"] for p in json.loads(instance.run("plugins", "--json", env=env).stdout)}


def test_a_job_file_parser_that_raises_rejects_the_file_with_one_line(instance):
    write_plugin(instance, "parser", '''
        from queuectl import hookimpl

        @hookimpl
        def queuectl_parse_job_file(path):
            raise RuntimeError("parser broke")
    ''')
    spool = instance.root / "incoming"
    spool.mkdir()
    (spool / "a.yaml").write_text("command: echo hi\n")
    proc = instance.run("spool", "scan", spool)
    assert "Traceback" not in proc.stderr
    assert "rejected a.yaml: the job file parser failed: RuntimeError: parser broke" in proc.stderr
    [error] = (spool / "rejected").glob("*.error")
    assert error.read_text() == "a.yaml: the job file parser failed: RuntimeError: parser broke\n"
    assert instance.json("list") == []


@pytest.mark.parametrize("marker", ["hookwrapper=True", "wrapper=True"])
def test_a_hook_wrapper_is_refused_with_one_line_not_called_as_a_plain_hook(instance, marker):
    job_id = instance.enqueue("echo fine")
    write_plugin(instance, "wrapping", f'''
        from pathlib import Path
        from queuectl import hookimpl

        @hookimpl({marker})
        def queuectl_attempt_finished(job):
            Path("wrapped").write_text("ran")
            return (yield)
    ''')
    for args in (["enqueue", "--command", "true"], ["worker", "start", "--burst"], ["list"]):
        proc = instance.run(*args, check=False)
        assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "plugin wrapping" in proc.stderr and "queuectl_attempt_finished is a hook wrapper" in proc.stderr
        assert "QUEUECTL_DISABLE_PLUGINS=wrapping" in proc.stderr
    shown = instance.json("show", job_id, env={"QUEUECTL_DISABLE_PLUGINS": "wrapping"})
    assert shown["state"] == "pending" and not (instance.root / "wrapped").exists()
