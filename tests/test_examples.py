"""The example distributions and the docs/hooks.md walkthrough, built and installed by pip for real
and run through real pools, so a change to the hook contract that breaks them fails here.

pip installs them (with --no-deps --no-index --no-build-isolation: no network) into a folder of
their own that the queuectl processes get on PYTHONPATH; their entry points are found there as in
site-packages. A failed install skips on a developer's machine and fails under CI=true.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import IN_CI, ROOT

EXAMPLES = ("queuectl-python", "queuectl-slack")
DOC_FILE = re.compile(r"```\w+\n# queuectl-batch/([\w./-]+)\n(.*?)```", re.S)


def walkthrough_files() -> dict:
    """The distribution the walkthrough in docs/hooks.md builds: {file name: content}, as printed."""
    text = (ROOT / "docs" / "hooks.md").read_text()
    return {name: f"# queuectl-batch/{name}\n{body}" for name, body in DOC_FILE.findall(text)}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The installed examples, built once per test run: parallel workers (pytest-xdist) share one
    build in the run's common temporary folder, the first to come builds it under a lock."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent                      # this run's folder, above each worker's own
    with open(shared / "examples.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = shared / "examples-site"
        if not (target / ".complete").exists():
            _build_site(tmp_path_factory.mktemp("examples"), target)
            (target / ".complete").touch()
    return target


def _build_site(base, target) -> None:
    sources = []
    for name in EXAMPLES:            # built from a copy: setuptools writes build/ and *.egg-info beside the sources
        shutil.copytree(ROOT / "examples" / name, base / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        sources.append(str(base / name))
    batch = base / "queuectl-batch"
    batch.mkdir()
    for name, content in walkthrough_files().items():
        (batch / name).write_text(content)
    sources.append(str(batch))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(target), *sources],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        message = f"pip could not install the examples: {proc.stderr.strip()[-2000:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def test_the_walkthrough_shows_both_files_of_its_distribution():
    assert sorted(walkthrough_files()) == ["pyproject.toml", "queuectl_batch.py"]


def test_the_walkthrough_distribution_adds_an_executor_a_notifier_and_a_command(instance, site):
    instance.env["PYTHONPATH"] = str(site)
    instance.write_config(dict(instance.config, **{"batch-journal": "journal.jsonl"}))
    plugins = {p["name"]: p for p in instance.json("plugins")}
    assert plugins["batch"]["origin"] == "entry point queuectl_batch"
    assert {"queuectl_register_executors", "queuectl_register_notifiers", "queuectl_register_commands"} <= \
        set(plugins["batch"]["hooks"])
    job_id = instance.run("enqueue", "--executor", "batch", "--command", "nice").stdout.strip()
    instance.run("worker", "start", "--burst")
    [log] = instance.json("logs", job_id)
    assert log["stdout"] == "19\n"
    [event] = instance.json("journal")
    assert (event["event"], event["job"], event["error"]) == ("job.completed", job_id, None)
    assert job_id in instance.run("journal").stdout
    unset = instance.run("journal", env={"QUEUECTL_BATCH_JOURNAL": ""}, check=False)
    assert unset.returncode == 2 and unset.stderr == "queuectl: error: set batch-journal in config.yaml first\n"


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_example_passes_its_own_tests_once_installed(example, site):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"],
                          cwd=ROOT / "examples" / example, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout
