"""Security: plugin bytecode, spool hard links, the audit log's symlink, terminal escapes.

Real files, real processes; terminal checks run the CLI in a real pseudo-terminal.
"""
from __future__ import annotations

import os
import py_compile
import re
import shutil
import subprocess
import sys

from conftest import QUEUECTL, ROOT, run_on_pty, wait_until

EVIL = b"\x1b]0;PWNED-TITLE\x07\x1b]52;c;ZXZpbA==\x07\x1b[2J"


def in_pty(instance, *args, timeout: float = 60) -> bytes:
    """Run the CLI with stdin, stdout and stderr on a real pseudo-terminal; return what it showed."""
    return run_on_pty(instance, *args, timeout=timeout)[1]


# --- plugin bytecode ------------------------------------------------------------------------------


def test_a_planted_plugin_pyc_is_never_run_and_no_pycache_is_written(instance):
    instance.run("init")
    marker = instance.root / "pwned"
    plugin = instance.plugins / "hello.py"
    plugin.write_text("from queuectl import hookimpl\n\n@hookimpl\ndef queuectl_status_info(queue):\n"
                      "    return {'hello': {'from': 'source'}}\n")
    evil = instance.root / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cache = instance.plugins / "__pycache__"
    cache.mkdir()
    os.chmod(cache, 0o777)
    tag = sys.implementation.cache_tag
    # An unchecked hash-based pyc is used by the standard loader without looking at the source.
    py_compile.compile(str(evil), cfile=str(cache / f"hello.{tag}.pyc"),
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    shutil.rmtree(cache / "__pycache__", ignore_errors=True)
    env = {k: v for k, v in instance.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([*QUEUECTL, "status", "--json"], cwd=instance.root, env=env, capture_output=True,
                          text=True, preexec_fn=lambda: os.umask(0), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"from": "source"' in proc.stdout, "the plugin ran from its source"
    assert not marker.exists(), "the planted bytecode was executed"
    shutil.rmtree(cache)
    proc = subprocess.run([*QUEUECTL, "plugins"], cwd=instance.root, env=env, capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(0), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not cache.exists(), "loading a plugin wrote __pycache__ into the plugins folder"


def test_a_plugin_that_is_a_symlink_is_refused(instance):
    target = instance.root / "elsewhere.py"
    target.write_text("x = 1\n")
    (instance.plugins / "linked.py").symlink_to(target)
    proc = instance.run("plugins", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "linked.py" in proc.stderr, proc.stderr


# --- spool hard links -----------------------------------------------------------------------------


def test_a_spool_file_with_several_hard_links_is_refused_unread(instance):
    spool = instance.root / "spool"
    spool.mkdir(mode=0o700)
    secret = instance.root / "shadow"
    secret.write_text("command: root-secret-line-5f3a\n")
    os.chmod(secret, 0o600)
    os.link(secret, spool / "job.yaml")
    proc = instance.run("spool", "scan", str(spool), check=False)
    rejected = list((spool / "rejected").glob("*.error"))
    assert len(rejected) == 1
    text = proc.stdout + proc.stderr + rejected[0].read_text()
    assert "hard links" in text and "it was not read" in text
    assert "root-secret-line-5f3a" not in text, "the refused file's content was quoted"
    assert instance.json("list") == []


# --- the audit log -----------------------------------------------------------------------------------


def test_the_audit_log_does_not_follow_a_planted_symlink(instance):
    shutil.copy(ROOT / "plugins" / "audit_log.py", instance.plugins / "audit_log.py")
    victim = instance.root / "victim"
    victim.write_text("precious\n")
    (instance.root / "audit.jsonl").symlink_to(victim)
    instance.write_config(dict(instance.config, **{"audit-log": "audit.jsonl"}))
    job_id = instance.enqueue("true")
    proc = instance.run("worker", "start", "--burst", "--no-spool", timeout=120)
    assert instance.job(job_id)["state"] == "completed"
    assert victim.read_text() == "precious\n", "the audit line went through the symlink"
    assert [line for line in proc.stderr.splitlines() if "audit_log" in line], proc.stderr
    os.unlink(instance.root / "audit.jsonl")
    second = instance.enqueue("true")
    instance.run("worker", "start", "--burst", "--no-spool", timeout=120)
    assert second in (instance.root / "audit.jsonl").read_text()
    assert (os.stat(instance.root / "audit.jsonl").st_mode & 0o777) == 0o600


# --- terminal escapes ------------------------------------------------------------------------------


def evil_job(instance) -> str:
    printf = "".join(f"\\{b:03o}" for b in EVIL + b"\xff\xfe tail")
    # The command itself holds raw escapes too (in a no-op), for list and show.
    job_id = instance.enqueue(f": '\x1b]0;T\x07'; printf '{printf}'; printf '{printf}' >&2; exit 3",
                              id="evil", max_retries=0)
    instance.run("worker", "start", "--burst", "--no-spool", timeout=120)
    return job_id


def test_logs_list_and_show_escape_controls_on_a_terminal(instance):
    job_id = evil_job(instance)
    for args in (["logs", job_id], ["list"], ["show", job_id], ["dlq", "list"]):
        seen = re.sub(rb"\x1b\[[0-9;]*m", b"", in_pty(instance, *args))   # queuectl's own colors may stay
        assert b"\x1b" not in seen and b"\x07" not in seen, (args, seen)
        assert b"\\x1b" in seen, (args, seen)
    raw = in_pty(instance, "logs", job_id, "--raw")
    assert EVIL in raw, "--raw shows the output as stored"


def test_piped_logs_are_byte_exact(instance):
    job_id = evil_job(instance)
    out = subprocess.run([*QUEUECTL, "logs", job_id], cwd=instance.root, env=instance.env, capture_output=True,
                         timeout=60).stdout
    stored = EVIL + b"\xff\xfe tail"
    assert out.count(stored) == 2, out       # stdout and stderr, bytes as the command wrote them


def test_spool_log_lines_escape_file_names_on_a_terminal(instance):
    spool = instance.root / "spool"
    spool.mkdir(mode=0o700)
    name = "x\x1b]0;TITLE\x07y.yaml"
    (spool / name).write_text("command: [not, a, string]\n")
    seen = in_pty(instance, "spool", "scan", str(spool))
    assert b"rejected" in seen and b"\x1b" not in seen and b"\\x1b" in seen, seen
    wait_until(lambda: list((spool / "rejected").iterdir()), message="the file to be rejected")
