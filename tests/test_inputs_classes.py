"""Inputs at the boundary, second round (issue 10): the holes a red-team pass found beyond the issue's
examples, each closed as a class and pinned here with a few members of the class.

- Text a store cannot hold (a lone surrogate: what a non-UTF-8 byte of a command line decodes to;
  a NUL byte) in any id, prefix, filter, name, label or setting.
- Prefixes at the edge of Unicode (U+10FFFF), label values with control characters or line
  separators, settings that cannot be disabled or parsed, a default store folder that cannot be made.
- A store that fails under a worker: one line per streak of errors, a patient worker keeps trying,
  a --burst pool exits non-zero when work is left.
- Error messages name what the user typed (`queue limit NAME N`).

Real CLI processes against a real store, on both backends.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess

import pytest

from conftest import QUEUECTL, pg_execute, wait_until

BOTH_BACKENDS = True

BAD = "\udcff"            # a non-UTF-8 byte (0xff) of the command line, as Python decodes it

REFUSED = [
    ["show", BAD], ["show", "k" + BAD], ["logs", BAD], ["cancel", BAD], ["retry", BAD], ["dlq", "retry", BAD],
    ["edit", BAD, "--command", "true"], ["wait", BAD, "--timeout", "1"],
    ["show", "\U0010ffff"], ["show", "k\U0010ffff"], ["show", "k\x1b[2J"],
    ["list", "--grep", BAD], ["list", "--label", BAD], ["list", "--label", "a=" + BAD],
    ["wait", "--queue", BAD, "--timeout", "1"],
    ["enqueue", "--command", "true", "--after", BAD],
    ["enqueue", '{"command": "true", "labels": {"a": "\\ud800"}}'],
    ["enqueue", "--command", "true", "--label", "a=b\u2028c"],
    ["enqueue", "--command", "true", "--label", "a=\x85"],
    ["enqueue", "--command", "true", "--label", "a=\x9b2J"],
    ["schedule", "remove", BAD],
    ["schedule", "add", "s\x1b", "--cron", "* * * * *", "--command", "true"],
    ["config", "set", "on-dead", BAD],
    ["config", "set", "webhook-secret", BAD],
    ["config", "set", "webhook-url", "http://a/\r\nX-Evil: 1"],
    ["config", "set", "webhook-url", "http://a:99999/"],
    ["config", "set", "webhook-url", "http://a/ b"],
    ["queue", "limit", "q", "-1"],
    ["queue", "limit", "q", "99999999999999999999999"],
]


@pytest.mark.parametrize("args", REFUSED, ids=lambda a: " ".join(a).encode("unicode_escape").decode()[:60])
def test_text_no_store_can_hold_is_one_line_and_changes_nothing(instance, args):
    # The bad text goes through a real `queuectl` process; the store is set up and looked at through
    # the same CLI run in this process (a process start-up each would cost five times the check).
    assert instance.cli("enqueue", json.dumps({"command": "true", "id": "kept"}))[0] == 0
    before = instance.cli_json("list"), instance.cli_json("config", "list")
    proc = instance.run(*args, check=False)
    assert proc.returncode != 0 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("queuectl: error: ") and "Traceback" not in proc.stderr
    assert (instance.cli_json("list"), instance.cli_json("config", "list")) == before


EMPTY_LOCATIONS = [
    # (arguments, extra environment, extra config keys, what the one line names)
    (["--db", "", "status"], {}, {}, "flag value: db: an empty location"),
    (["--db", " ", "enqueue", "true"], {}, {}, "flag value: db: an empty location"),
    (["enqueue", "true"], {"QUEUECTL_DB": ""}, {}, "environment QUEUECTL_DB: db: an empty location"),
    (["--plugins-dir", "", "status"], {}, {}, "flag value: plugins-dir: an empty location"),
    (["status"], {"QUEUECTL_SPOOL": ""}, {}, "environment QUEUECTL_SPOOL: spool: an empty location"),
    (["status"], {}, {"spool": " "}, "spool: an empty location"),
    (["status"], {}, {"notify-outbox": ""}, "notify-outbox: an empty location"),
    (["status"], {}, {"plugins-dir": ""}, "plugins-dir: an empty location"),
    (["--config", "", "status"], {}, {}, "--config: an empty path"),
    (["worker", "start", "--burst", "--spool", ""], {}, {}, "spool folder '': an empty location"),
    (["spool", "watch", ""], {}, {}, "spool folder '': an empty location"),
]


@pytest.mark.parametrize("args, env, config, message", EMPTY_LOCATIONS,
                         ids=[" ".join(a) + " " + " ".join(e) + " " + " ".join(c) for a, e, c, _ in EMPTY_LOCATIONS])
def test_an_empty_location_is_refused_not_read_as_the_default(instance, args, env, config, message):
    """`--db "$DB"` or `QUEUECTL_DB="$DB"` with DB unset must not switch to the default store (or the default
    spool folder, plugins folder or config file): one line, exit 2, and the queue named by the config is
    left as it was."""
    assert instance.cli("enqueue", json.dumps({"command": "true", "id": "kept"}))[0] == 0
    before = instance.cli_json("list")
    if config:
        instance.config_path.write_text(instance.config_path.read_text() + "".join(
            f"{key}: {json.dumps(value)}\n" for key, value in config.items()))
    proc = instance.run(*args, env=env, check=False, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (instance.root / "xdg-data" / "queuectl").exists()       # no default store was made
    instance.write_config(instance.config)
    assert instance.cli_json("list") == before


def test_a_nul_byte_in_a_text_setting_is_refused_everywhere(instance):
    from queuectl import Queue
    from queuectl.errors import QueueError

    instance.run("init")
    with Queue.open(config=str(instance.config_path), env={}) as queue:
        for key in ("on-dead", "webhook-secret", "webhook-url"):
            with pytest.raises(QueueError, match="NUL"):
                queue.config_set(key, "a\x00b")
    instance.config_path.write_text(instance.config_path.read_text() + 'on-dead: "a\\0b"\n')
    proc = instance.run("status", check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "NUL" in proc.stderr, proc.stderr


def test_queue_limit_errors_name_the_argument_typed(instance):
    for value in ("-1", "0", "abc", "1.5", "99999999999999999999999"):
        proc = instance.run("queue", "limit", "ci", value, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "'N|none'" in proc.stderr and "--limit" not in proc.stderr
        assert f"got {value!r}" in proc.stderr and "or none" in proc.stderr
    assert instance.run("queue", "limit", "ci", "none").stdout.strip() == "ci: limit none"


def test_the_validator_cannot_be_disabled(instance):
    proc = instance.run("list", env={"QUEUECTL_DISABLE_PLUGINS": "dashboard,validate"}, check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "'validate' plugin cannot be disabled" in proc.stderr
    instance.write_config(dict(instance.config, **{"disable-plugins": ["validate"]}))
    proc = instance.run("enqueue", '{"command": "true", "delay": 1e300}', check=False)
    assert proc.returncode == 2 and "cannot be disabled" in proc.stderr


def test_host_id_must_be_one_line(instance):
    proc = instance.run("status", env={"QUEUECTL_HOST_ID": "a\nb"}, check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "environment QUEUECTL_HOST_ID" in proc.stderr


def test_an_unmakeable_default_store_folder_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env.update(XDG_DATA_HOME="/proc/no-such-folder", XDG_CONFIG_HOME=str(tmp_path))
    proc = subprocess.run([*QUEUECTL, "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "cannot create the default store's folder" in proc.stderr


def test_the_postgres_backend_for_a_plain_path_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env.update(XDG_DATA_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path), QUEUECTL_STORAGE="postgres")
    proc = subprocess.run([*QUEUECTL, "--db", str(tmp_path / "queue.db"), "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "needs a postgresql:// URL" in proc.stderr


def test_exact_non_ascii_ids_are_looked_up_without_a_prefix_search(instance):
    instance.enqueue("true", id="kept")
    for ref in ("\U0010ffff", "é", "kept\U0010ffff"):
        proc = instance.run("show", ref, check=False)
        assert proc.returncode == 1 and proc.stderr.strip() == f"queuectl: error: no job with id {ref!r}"


def _break_the_claim(instance, backend):
    """A store fault only the claim meets: a trigger (as another tool could add) refuses every update
    to processing. Returns how to mend it."""
    instance.run("init")
    if backend == "sqlite":
        def sql(statement):
            with sqlite3.connect(instance.root / "queue.db") as conn:
                conn.execute(statement)
        sql("CREATE TRIGGER no_claims BEFORE UPDATE OF state ON jobs WHEN NEW.state = 'processing' "
            "BEGIN SELECT RAISE(ABORT, 'claims are refused'); END")
        return lambda: sql("DROP TRIGGER no_claims")
    schema = f'"{instance.config["pg-schema"]}"'
    pg_execute(f"CREATE FUNCTION {schema}.no_claims() RETURNS trigger LANGUAGE plpgsql AS "
               f"$$ BEGIN RAISE EXCEPTION 'claims are refused'; END $$")
    pg_execute(f"CREATE TRIGGER no_claims BEFORE UPDATE ON {schema}.jobs FOR EACH ROW "
               f"WHEN (NEW.state = 'processing') EXECUTE FUNCTION {schema}.no_claims()")
    return lambda: pg_execute(f"DROP TRIGGER no_claims ON {schema}.jobs")


def test_a_burst_pool_whose_store_fails_says_so_once_and_does_not_claim_success(instance, backend):
    job_id = instance.enqueue("echo hi")
    mend = _break_the_claim(instance, backend)
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=120) == 1
    err = pool.stderr.read()
    assert "Traceback" not in err, err
    assert err.count("cannot claim a job") == 2, err          # the first error of the streak, and giving up
    assert "giving up" in err and "burst: the workers stopped with work left" in err
    mend()
    assert instance.job(job_id)["state"] == "pending"
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=120) == 0, pool.stderr.read()
    assert instance.job(job_id)["state"] == "completed"


def test_a_patient_worker_keeps_retrying_a_failing_store_and_runs_the_job_once_it_is_mended(instance, backend):
    job_id = instance.enqueue("echo hi")
    mend = _break_the_claim(instance, backend)
    log = instance.root / "pool.log"
    with open(log, "w") as sink:
        pool = instance.start_pool(1, stderr=sink)
    wait_until(lambda: "cannot claim a job" in log.read_text(), timeout=60, message="the worker to meet the fault")
    assert pool.poll() is None and instance.job(job_id)["state"] == "pending"
    mend()
    try:
        instance.wait_for_state(job_id, "completed", timeout=120)
    finally:
        print(log.read_text())
    os.killpg(pool.pid, signal.SIGTERM)
    assert pool.wait(timeout=60) == 0
    err = log.read_text()
    assert "Traceback" not in err and "giving up" not in err, err
    assert all(len(line) < 400 for line in err.splitlines())


def test_strict_json_for_every_read_after_odd_but_valid_inputs(instance):
    for spec in ('{"command": "true", "labels": {"a": 1e400}}', '{"command": "true", "priority": 1e-400}',
                 '{"command": "true", "run_at": -0.0}', '{"command": "true", "max_retries": 5.0}'):
        instance.run("enqueue", spec)
    for args in (("list",), ("status",), ("stats",), ("queue", "list"), ("config", "list")):
        text = instance.run(*args, "--json").stdout
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {args} --json"))
