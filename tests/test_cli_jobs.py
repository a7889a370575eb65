"""Putting work in and finding it again, through the real CLI on both backends: argv jobs, labels,
--env-from-caller, list filters, id prefixes, edit and retry --command with their history."""
from __future__ import annotations

import json
import math
import time

import pytest

from conftest import pg_execute

BOTH_BACKENDS = True


def ids(instance, *args) -> list[str]:
    return [j["id"] for j in instance.json("list", *args)]


def test_argv_runs_without_a_shell_and_a_plain_positional_is_a_command(instance):
    argv_id = instance.run("enqueue", "--", "sh", "-c", 'echo "[$1]"', "sh", "$(touch pwned) *").stdout.strip()
    shell_id = instance.run("enqueue", "echo hi from $((6 * 7))").stdout.strip()
    stored = instance.job(argv_id)
    assert stored["argv"] == ["sh", "-c", 'echo "[$1]"', "sh", "$(touch pwned) *"]
    assert stored["command"] == "sh -c 'echo \"[$1]\"' sh '$(touch pwned) *'"       # shell-quoted, for show/grep
    assert instance.job(shell_id)["argv"] is None
    instance.run("worker", "start", "--burst")
    assert instance.cli_json("logs", argv_id)[0]["stdout"] == "[$(touch pwned) *]\n"
    assert not (instance.root / "pwned").exists()
    assert instance.cli_json("logs", shell_id)[0]["stdout"] == "hi from 42\n"


@pytest.mark.parametrize("args,message", [
    (["--", ], "nothing after --"),
    (["--command", "true", "--", "echo"], "either --command"),
    (["echo", "hi"], "queuectl enqueue -- echo hi"),
    (["{not json"], "malformed JSON job"),
    (['{"command": "true"', ], "malformed JSON job"),
    (["[1, 2]"], "must be an object"),
    (["--label", "novalue", "true"], "--label expects KEY=VALUE"),
    (["--label", "bad key=1", "true"], "label name 'bad key' is not valid"),
    (["true", "--file", "-"], "not a job and --file"),
])
def test_bad_ways_in_are_one_line_and_store_nothing(instance, args, message):
    # `list` reads: it never creates the store it is asked about. Set-up and the look afterwards run
    # the CLI in this process; the bad input goes through a real `queuectl` process.
    assert instance.cli("init")[0] == 0
    proc = instance.run("enqueue", *args, check=False, input="")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("queuectl: error: ") and message in proc.stderr
    assert instance.cli_json("list") == []


def test_shell_group_is_a_command_not_json(instance):
    job_id = instance.run("enqueue", "{ echo a; echo b; }").stdout.strip()
    instance.run("worker", "start", "--burst")
    assert instance.cli_json("logs", job_id)[0]["stdout"] == "a\nb\n"


def test_env_from_caller_captures_the_enqueuers_environment(instance):
    env = {"SECRET_TOKEN": "s3cr3t", "SHARED": "from-caller"}
    with_env = instance.run("enqueue", "--env-from-caller", "--env", "SHARED=flag-wins", "--",
                            "sh", "-c", 'echo "$SECRET_TOKEN $SHARED"', env=env).stdout.strip()
    without = instance.run("enqueue", "--", "sh", "-c", 'echo "[$SECRET_TOKEN]"', env=env).stdout.strip()
    assert instance.job(with_env)["env"]["SECRET_TOKEN"] == "s3cr3t"
    assert "SECRET_TOKEN" not in instance.job(without)["env"]          # the default stays as it was
    instance.run("worker", "start", "--burst")                         # the worker's env lacks them
    assert instance.cli_json("logs", with_env)[0]["stdout"] == "s3cr3t flag-wins\n"
    assert instance.cli_json("logs", without)[0]["stdout"] == "[]\n"


def test_list_filters_and_last(instance):
    # The jobs are set-up (the CLI run in this process); the filters of `list` are under test.
    instance.checked_cli("enqueue", "--id", "a1", "--label", "team=ops", "--label", "env=prod", "make backup")
    instance.checked_cli("enqueue", "--id", "a2", "--label", "team=dev", "--queue", "ci", "make test")
    instance.checked_cli("enqueue", "--id", "a3", "--label", "team=ops", "--queue", "ci", "echo 100%_DONE")
    # --since with whole seconds: the cut in a later second than a3's creation (not a fixed 1.1 s), a4 after it
    now = time.time()
    time.sleep(math.floor(now) + 1.01 - now)
    cut = time.time()
    time.sleep(0.1)
    instance.checked_cli("enqueue", "--id", "a4", "--", "rsync", "-a", "Backup/", "dst/")
    assert ids(instance, "--label", "team=ops") == ["a1", "a3"]
    assert ids(instance, "--label", "team=ops", "--label", "env=prod") == ["a1"]
    assert ids(instance, "--label", "env") == ["a1"]                    # KEY alone: any value
    assert ids(instance, "--label", "team=nobody") == []
    assert ids(instance, "--queue", "ci") == ["a2", "a3"]
    assert ids(instance, "--grep", "BACKUP") == ["a1", "a4"]            # case-insensitive, argv jobs too
    assert ids(instance, "--grep", "%_D") == ["a3"]                     # LIKE wildcards are literal
    assert ids(instance, "--grep", "0%_") == ["a3"] and ids(instance, "--grep", "_") == ["a3"]
    assert ids(instance, "--since", "1h") == ["a1", "a2", "a3", "a4"]     # a duration counts back from now
    assert ids(instance, "--since", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + "Z") == ["a4"]
    assert ids(instance, "--last", "2") == ["a3", "a4"]                 # the newest two, oldest first
    assert ids(instance, "--limit", "2") == ["a1", "a2"]
    assert ids(instance, "--last", "1", "--queue", "ci", "--state", "pending") == ["a3"]
    assert instance.run("list", "--grep", "nothing-like-this").stdout == "no jobs\n"
    listed = instance.run("list", "--label", "team=ops").stdout
    assert "LABELS" in listed.splitlines()[0] and "env=prod,team=ops" in listed
    for bad, message in ((["--since", "yesterday"], "--since expects"), (["--last", "2", "--limit", "1"], "--last"),
                         (["--queue", "bad name"], "queue name")):
        proc = instance.run("list", *bad, check=False)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1


def test_grep_is_case_insensitive_beyond_ascii_on_both_backends(instance):
    # SQLite's LIKE folds only A-Z: `--grep HÉLLO` found nothing there, and the job on PostgreSQL.
    instance.checked_cli("enqueue", "--id", "fr", "echo héllo Ünïcode")
    instance.checked_cli("enqueue", "--id", "el", "echo ΣΟΦΊΑ")
    instance.checked_cli("enqueue", "--id", "en", "echo HELLO")
    assert ids(instance, "--grep", "HÉLLO") == ["fr"] and ids(instance, "--grep", "üNÏ") == ["fr"]
    assert ids(instance, "--grep", "σοφία") == ["el"] and ids(instance, "--grep", "ΣΟΦΊΑ") == ["el"]
    assert ids(instance, "--grep", "hello") == ["en"] and ids(instance, "--grep", "é%") == []


def test_filters_use_indexes(instance):
    instance.checked_cli("enqueue", "--label", "team=ops", "true")
    if instance.config["db"].startswith("postgresql"):
        schema = instance.config["pg-schema"]
        names = {r[0] for r in pg_execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))}
        assert {"jobs_labels", "jobs_queue", "jobs_created", "jobs_id_prefix"} <= names
        return
    import sqlite3

    conn = sqlite3.connect(instance.root / "queue.db")
    plan = lambda sql, *p: " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, p))
    assert "job_labels" in plan("SELECT id FROM jobs WHERE id IN (SELECT job_id FROM job_labels WHERE key = ? "
                                "AND value = ?)", "team", "ops")
    assert "USING INDEX jobs_queue" in plan("SELECT id FROM jobs WHERE queue = ? ORDER BY seq", "ci")
    assert "jobs_created" in plan("SELECT id FROM jobs WHERE created_at >= ?", 0)
    assert "sqlite_autoindex_jobs" in plan("SELECT id FROM jobs WHERE id >= ? AND id < ?", "ab", "ac")


def test_job_id_prefixes_everywhere(instance):
    instance.checked_cli("enqueue", "--id", "deploy-web", "--max-retries", "0", "exit 3")    # set-up
    instance.checked_cli("enqueue", "--id", "deploy-db", "true")
    instance.checked_cli("enqueue", "--id", "report", "sleep 60")
    instance.checked_cli("enqueue", "--id", "rep", "true")
    assert instance.job("deploy-w")["id"] == "deploy-web"
    assert instance.job("rep")["id"] == "rep"                          # an exact id beats a longer match
    proc = instance.run("show", "deploy", check=False)
    assert proc.returncode == 2 and proc.stderr == \
        "queuectl: error: job id prefix 'deploy' is ambiguous: deploy-db, deploy-web\n"
    assert instance.run("show", "nope", check=False).returncode == 1
    assert instance.run("cancel", "repo").stdout == "report cancelled\n"
    assert instance.run("retry", "repo").stdout == "report pending\n"
    assert instance.run("cancel", "repo").stdout == "report cancelled\n"
    child = instance.run("enqueue", "--after", "deploy-d", "true").stdout.strip()
    assert instance.job(child)["after"] == ["deploy-db"]
    instance.run("cancel", "rep")
    instance.run("worker", "start", "--burst")
    assert instance.json("logs", "deploy-w")[0]["exit_code"] == 3
    assert instance.run("logs", "deploy-w", "--attempt", "1").returncode == 0
    assert instance.run("dlq", "retry", "deploy-w").stdout == "deploy-web pending\n"
    assert instance.run("edit", "deploy-w", "--command", "true").stdout.startswith("deploy-web pending")
    assert instance.run("show", "report…").returncode == 0            # copied from a cut table cell


def test_after_refuses_an_empty_id_and_resolves_prefixes_for_a_file_too(instance):
    """`--after "$BUILD"` with BUILD empty must not make a job that waits for nothing: an empty id is one
    error line and exit 2, and nothing is enqueued. A prefix resolves the same with --file, except an id
    that a job of the file itself takes (that job is not in the store yet)."""
    instance.checked_cli("enqueue", "--id", "build-1234", "true")
    instance.checked_cli("enqueue", "--id", "b1-old", "true")
    for value in ("", ",", " ", "build-1234,", ",build-1234", "build-1234,,b1-old", " , "):
        code, out, err = instance.cli("enqueue", "--after", value, "true")
        assert (code, out) == (2, ""), (value, code, out, err)
        assert err == f"queuectl: error: --after {value!r}: an empty name in the list; give names " \
                      "separated by commas\n", value
    assert len(instance.cli_json("list")) == 2
    lines = '{"id": "x1", "command": "true"}\n{"id": "x2", "command": "true"}\n'
    ids = instance.run("enqueue", "--file", "-", "--after", "build-12", input=lines).stdout.split()
    assert ids == ["x1", "x2"] and [instance.job(i)["after"] for i in ids] == [["build-1234"], ["build-1234"]]
    # An id that a job of the file takes is that job, not a prefix of a stored one ("b2-stored"): here
    # the file's b2 would wait for itself, which is refused, and nothing of the file is enqueued.
    instance.checked_cli("enqueue", "--id", "b2-stored", "true")
    proc = instance.run("enqueue", "--file", "-", "--after", "b2", check=False,
                        input='{"id": "b1", "command": "true"}\n{"id": "b2", "command": "true"}\n')
    assert proc.returncode == 2 and proc.stderr == "queuectl: error: line 2: job 'b2' cannot depend on itself\n", proc
    assert {j["id"] for j in instance.cli_json("list")} == {"build-1234", "b1-old", "x1", "x2", "b2-stored"}
    ids = instance.run("enqueue", "--file", "-", "--after", "b2, x1", input='{"id": "b1", "command": "true"}\n').stdout
    assert ids == "b1\n" and instance.job("b1")["after"] == ["b2-stored", "x1"]


def test_edit_keeps_history_and_goes_through_the_validator(instance):
    instance.checked_cli("enqueue", "--id", "job", "--max-retries", "0", "--env", "A=1", "--env", "B=2",
                         "--label", "team=ops", "exit 5")
    instance.run("worker", "start", "--burst")
    assert instance.job("job")["state"] == "dead"
    out = instance.run("edit", "job", "--command", "echo fixed $A $B", "--env", "A=9", "--unset-env", "B",
                       "--timeout", "10m", "--label", "team=dev", "--label", "ticket=42").stdout
    assert out.startswith("job dead: edited ")
    job = instance.job("job")
    assert job["state"] == "dead" and job["command"] == "echo fixed $A $B" and job["env"] == {"A": "9"}
    assert job["timeout"] == 600 and job["labels"] == {"team": "dev", "ticket": "42"}
    (edit,) = job["edits"]
    assert edit["before"] == {"command": "exit 5", "env": {"A": "1", "B": "2"}, "timeout": None,
                              "labels": {"team": "ops"}}
    assert [j["id"] for j in instance.cli_json("list", "--label", "ticket=42")] == ["job"]
    assert instance.cli_json("list", "--label", "team=ops") == []
    for bad, message in ((["--cwd", "/no/such/dir"], "is not an existing folder"),
                         (["--label", "bad key=1"], "label name"), (["--timeout", "soon"], "not a duration"),
                         ([], "nothing to change"),
                         # one key set and removed in one edit: which was meant is unknown (it used to
                         # be removed, the value given dropped without a word)
                         (["--env", "A=2", "--unset-env", "A"], "--env A and --unset-env A: give one of them"),
                         (["--unset-label", "team", "--label", "team=x"],
                          "--label team and --unset-label team: give one of them")):
        proc = instance.run("edit", "job", *bad, check=False)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1
    assert instance.job("job")["edits"] == [edit]                      # refused edits change nothing
    assert instance.run("retry", "job").stdout == "job pending\n"
    instance.run("worker", "start", "--burst")
    logs = instance.cli_json("logs", "job")
    assert [a["exit_code"] for a in logs] == [5, 0] and logs[1]["stdout"] == "fixed 9\n"
    assert "edited:" in instance.run("show", "job").stdout


def test_retry_with_a_new_command_and_argv_edit(instance):
    instance.checked_cli("enqueue", "--id", "j", "--max-retries", "0", "exit 1")
    instance.run("worker", "start", "--burst")
    assert instance.run("retry", "j", "--", "echo", "$(argv)").stdout == "j pending\n"
    job = instance.job("j")
    assert job["argv"] == ["echo", "$(argv)"] and len(job["edits"]) == 1 and job["retries_left"] == 0
    instance.run("worker", "start", "--burst")
    assert instance.cli_json("logs", "j")[-1]["stdout"] == "$(argv)\n"
    assert instance.run("retry", "j", "--command", "echo back to $((1 + 1))").stdout == "j pending\n"
    instance.run("worker", "start", "--burst")
    assert instance.cli_json("logs", "j")[-1]["stdout"] == "back to 2\n" and instance.job("j")["argv"] is None
    assert len(instance.cli_json("logs", "j")) == 3 and len(instance.job("j")["edits"]) == 2


def test_a_running_or_completed_job_cannot_be_edited(instance):
    # "runs" must still run when it is cancelled below: 30 s of sleep ran out on a loaded machine first.
    instance.checked_cli("enqueue", "--id", "runs", "sleep 3600")
    instance.checked_cli("enqueue", "--id", "done", "true")
    pool = instance.start_pool(2)
    instance.wait_for_state("runs", "processing")
    instance.wait_for_state("done", "completed")
    for job_id, state in (("runs", "processing"), ("done", "completed")):
        proc = instance.run("edit", job_id, "--command", "echo edited", check=False)
        assert proc.returncode == 1 and f"is {state}" in proc.stderr
        assert state != "completed" or "use queuectl retry done" in proc.stderr
        assert instance.job(job_id)["edits"] == [] and instance.job(job_id)["command"] != "echo edited"
    instance.checked_cli("cancel", "runs")
    instance.wait_for_state("runs", "cancelled")
    assert instance.run("edit", "runs", "--command", "true").returncode == 0
    pool.terminate()
    pool.wait(timeout=60)


def test_labels_and_argv_through_json_file_and_python(instance, tmp_path):
    lines = [json.dumps({"id": "f1", "argv": ["echo", "x"], "labels": {"k": "v"}}),
             json.dumps({"id": "f2", "command": "true", "labels": {"k": "w"}})]
    instance.run("enqueue", "--file", "-", input="\n".join(lines))
    assert ids(instance, "--label", "k=v") == ["f1"] and instance.job("f1")["argv"] == ["echo", "x"]
    proc = instance.run("enqueue", json.dumps({"command": "true", "argv": ["true"]}), check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr
    proc = instance.run("enqueue", json.dumps({"argv": []}), check=False)
    assert proc.returncode == 2 and "non-empty list" in proc.stderr
    instance.run("purge", "--state", "completed", "--older-than", "0s")      # nothing completed: nothing goes
    assert ids(instance, "--label", "k") == ["f1", "f2"]
