"""What a person sees: tables that fit an 80-column terminal, colors, human durations and relative
times on a real pseudo-terminal; plain text in pipes; help, completion and the worker's banner."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import unicodedata

import pytest

from conftest import QUEUECTL, run_on_pty, wait_for_stderr

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG = "echo " + "a-very-long-argument " * 12


def run_pty(instance, *args, cols: int = 80, env: dict | None = None, timeout: float = 60) -> str:
    """Run queuectl on a real pseudo-terminal of ``cols`` columns, colors allowed; returns what it printed."""
    full_env = {k: v for k, v in instance.env.items() if k != "NO_COLOR"}
    full_env.update({"TERM": "xterm-256color", **(env or {})})
    code, out = run_on_pty(instance, *args, env=full_env, cols=cols, timeout=timeout)
    assert code == 0, out.decode(errors="replace")
    return out.decode().replace("\r\n", "\n")


def columns_of(line: str) -> int:
    """Terminal columns of a line, colors left out."""
    plain = ANSI.sub("", line)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in plain)


@pytest.fixture
def filled(instance):
    """A store with a dead job with a long error, a long command with labels, one scheduled later."""
    instance.run("enqueue", "--id", "dead-one", "--max-retries", "0", "--label", "team=ops",
                 "--command", "echo " + "x" * 150 + "; exit 3")
    instance.run("worker", "start", "--burst")
    instance.run("enqueue", "--id", "long-one", "--label", "team=ops", "--label", "env=prod", LONG)
    instance.run("enqueue", "--id", "later-one", "--delay", "5m", "--queue", "ci", "sleep 1")
    return instance


def test_list_fits_80_columns_with_colors_and_relative_times(filled):
    out = run_pty(filled, "list")
    lines = out.strip("\n").split("\n")
    assert len(lines) == 4, out                               # a header and one line per job: nothing wraps
    assert all(columns_of(line) <= 80 for line in lines), [columns_of(line) for line in lines]
    assert "…" in out                                         # the long command was cut
    assert "\x1b[31;1mdead\x1b[0m" in out and "pending" in out   # states in color
    header = ANSI.sub("", lines[0]).split()
    assert header[:3] == ["ID", "STATE", "ATTEMPTS"]
    dead = ANSI.sub("", next(line for line in lines if "dead-one" in line))
    assert re.search(r"\b1/1\b", dead) and re.search(r"\b\d+s ago\b|\bnow\b", dead)
    assert "Z " not in ANSI.sub("", out)                      # no ISO times on a terminal


def test_pipes_are_plain_and_json_keeps_full_values(filled):
    out = filled.run("list").stdout
    assert "\x1b" not in out
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out)   # ISO-8601 UTC in pipes
    jobs = {j["id"]: j for j in filled.json("list")}
    assert jobs["long-one"]["command"] == LONG and jobs["long-one"]["labels"] == {"team": "ops", "env": "prod"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", jobs["later-one"]["run_at"])


def test_color_modes_and_no_color(filled):
    assert "\x1b[" not in run_pty(filled, "list", env={"NO_COLOR": "1"})
    assert "\x1b[" not in run_pty(filled, "--color", "never", "list")
    assert "\x1b[31;1mdead" in run_pty(filled, "--color", "always", "list", env={"NO_COLOR": "1"})
    assert "\x1b[31;1mdead" in filled.run("--color", "always", "list").stdout    # always: pipes too
    assert "\x1b[" not in filled.run("list", env={"QUEUECTL_COLOR": "auto"}).stdout


def test_wide_terminal_shows_whole_values_and_show_gives_local_times(filled):
    out = run_pty(filled, "list", cols=400)
    assert LONG.strip() in ANSI.sub("", out)
    shown = run_pty(filled, "show", "later", env={"TZ": "America/New_York"})   # a prefix of later-one
    assert re.search(r"run_at:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d E[SD]T \(in [45]m\)", ANSI.sub("", shown)), shown
    assert re.search(r"labels:\s+env=prod,team=ops", run_pty(filled, "show", "long-one"))


def test_job_text_is_escaped_on_a_terminal_only(instance):
    instance.run("enqueue", "--id", "esc", "--label", "k=v", "printf '\x1b]0;pwned\x07'")
    out = run_pty(instance, "list")
    assert "\x1b]0;" not in out and "\\x1b]0;pwned\\x07" in out
    assert "\x1b]0;pwned\x07" in instance.run("list").stdout       # piped output stays exact
    assert "\x1b]0;" not in run_pty(instance, "show", "esc")


def test_status_shows_running_jobs_with_command_and_elapsed_time(instance):
    job_id = instance.run("enqueue", "--id", "runner", "sleep 30").stdout.strip()
    pool = instance.start_pool(1)
    instance.wait_for_state(job_id, "processing")
    time.sleep(1.2)
    out = ANSI.sub("", run_pty(instance, "status"))
    table = out.split("workers:", 1)[1].splitlines()[1:]            # paths above are shown whole
    assert table and all(columns_of(line) <= 80 for line in table), out
    row = next(line for line in out.splitlines() if "runner" in line)
    assert "sleep 30" in row and re.search(r"\b\d+(\.\d)?s\b", row) and "ago" in row
    data = instance.json("status")
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert all(re.fullmatch(iso, w["started_at"]) and re.fullmatch(iso, w["heartbeat_at"]) for w in data["workers"])
    (running,) = data["running"]
    assert running["id"] == "runner" and running["command"] == "sleep 30" and running["elapsed"] >= 1
    assert re.fullmatch(iso, running["started_at"])
    instance.run("cancel", "runner")       # (two SIGTERMs sent at once can arrive as one: the job would run out)
    instance.wait_for_state("runner", "cancelled")
    os.killpg(pool.pid, signal.SIGTERM)
    pool.wait(timeout=60)


def test_empty_list_says_no_jobs(instance):
    instance.run("init")
    assert instance.run("list").stdout == "no jobs\n"
    assert instance.json("list") == []


def test_human_durations_in_show_and_stats(instance):
    job_id = instance.run("enqueue", "sleep 1.3").stdout.strip()
    instance.run("worker", "start", "--burst")
    shown = instance.run("show", job_id).stdout
    took = instance.json("show", job_id)["history"][0]["duration"]
    assert 1.3 <= took < 10                                          # JSON keeps seconds
    # seconds with one decimal, the run's own (a loaded machine's 1.3 s sleep can take 2.1 s: not "1.x")
    assert re.search(rf"\b{took:.1f}s\b", shown), shown
    assert re.search(rf"avg_duration:\s+{took:.1f}s", instance.run("stats").stdout)


# --- help and completion ----------------------------------------------------------------------


def all_commands(instance):
    """Every command path, plugins' included, from the real CLI's help (run in this process: some
    thirty process start-ups would cost more than everything else the test does)."""
    def walk(path):
        code, out, err = instance.cli(*path, "--help")
        assert code == 0, err
        names = re.findall(r"^  (\S+)\s{2,}", out.split("Commands:\n", 1)[1], re.M) if "Commands:\n" in out else []
        yield path, out
        for name in names:
            yield from walk(path + [name])
    return list(walk([]))


def test_every_command_has_an_example_and_typed_metavars(instance):
    helps = all_commands(instance)
    assert len(helps) > 25
    missing = [" ".join(path) for path, text in helps if "Example" not in text]
    assert not missing, missing
    by_path = {" ".join(path): text for path, text in helps}
    assert "[pending|processing|completed|failed|dead|cancelled]" in by_path["list"]
    assert "--last INTEGER" in by_path["list"] and "--since DURATION|TIME" in by_path["list"]
    assert "--older-than DURATION" in by_path["purge"]
    assert "--timeout DURATION" in by_path["edit"]
    schedule_add = by_path["schedule add"]
    assert "--run-at" not in schedule_add and "--id " not in schedule_add and "--command" in schedule_add


@pytest.mark.parametrize("group", [[], ["dlq"], ["queue"], ["config"]])
def test_a_bare_group_prints_its_help_without_error(instance, group):
    proc = instance.run(*group, check=False)
    assert proc.returncode == 0 and "error" not in proc.stderr + proc.stdout.split("Commands:")[0].lower()
    assert proc.stdout.startswith("Usage: ") and "Commands:" in proc.stdout


def complete(instance, words: str, shell: str = "bash") -> list[str]:
    env = {"_QUEUECTL_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    proc = instance.run(env=env)
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if "," in line]


def test_completion_scripts_and_dynamic_values(instance):
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef queuectl"), ("fish", "complete")):
        assert marker in instance.run("completion", shell).stdout
    assert complete(instance, "queuectl sh") == ["show"]
    assert complete(instance, "queuectl show ") == []            # no store yet: none is made for completion
    assert not (instance.root / "queue.db").exists()
    instance.run("enqueue", "--id", "alpha-1", "--queue", "ci", "true")
    instance.run("enqueue", "--id", "alpha-2", "true")
    instance.run("enqueue", "--id", "beta", "true")
    instance.run("schedule", "add", "nightly", "--cron", "0 2 * * *", "--command", "true")
    assert complete(instance, "queuectl show al") == ["alpha-1", "alpha-2"]
    assert complete(instance, "queuectl cancel beta al") == ["alpha-1", "alpha-2"]
    assert complete(instance, "queuectl list --state d") == ["dead"]
    assert complete(instance, "queuectl list --queue c") == ["ci"]
    assert complete(instance, "queuectl schedule remove n") == ["nightly"]
    assert complete(instance, "queuectl dlq retry b") == ["beta"]


def test_readme_gives_an_install_line_per_shell():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for line in ('eval "$(queuectl completion bash)"', 'eval "$(queuectl completion zsh)"',
                 "queuectl completion fish > ~/.config/fish/completions/queuectl.fish"):
        assert line in readme


# --- the worker's banner and Ctrl-C ------------------------------------------------------------


def test_worker_banner_ctrl_c_and_timestamped_verbose_lines(instance):
    # "slow" runs until the pool has taken the Ctrl-C (the test lets it end then): a fixed 3 s run could
    # end before a slow machine had the other two jobs dead, and no job would be left running.
    release = instance.root / "release"
    instance.run("enqueue", "--id", "slow", f"while [ ! -e {release} ]; do sleep 0.05; done")
    instance.run("enqueue", "--id", "bad", "--max-retries", "0", "exit 4")
    instance.run("enqueue", "--id", "flaky", "--max-retries", "1", "exit 75")
    pool = instance.start_pool(2, "-v")
    instance.wait_for_state("slow", "processing")
    instance.wait_for_state("bad", "dead")
    instance.wait_for_state("flaky", "dead")
    os.killpg(pool.pid, signal.SIGINT)                 # what a terminal's Ctrl-C sends to the group
    seen = wait_for_stderr(pool, "finishing 1 running job(s)")
    release.touch()
    _, rest = pool.communicate(timeout=60)
    err = seen + rest
    assert pool.returncode == 0
    lines = err.splitlines()
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} queuectl: "
    assert re.match(stamp + rf"pool {pool.pid} started: 2 worker\(s\), store sqlite \S+queue\.db", lines[0]), lines
    assert all(re.match(stamp, line) for line in lines), lines
    assert any("finishing 1 running job(s); press Ctrl-C again to stop them" in line for line in lines), lines
    dead = [line for line in lines if "bad" in line and "dead" in line]
    assert len(dead) == 1, lines                       # the dead job is reported once
    assert any(re.search(r"job flaky attempt 1: failed \(exit 75\) in \d+ms -> failed, retry in \d+ms$", line)
               for line in lines), lines
    assert instance.job("slow")["state"] == "completed"


def test_worker_banner_without_verbose_names_the_spool(instance):
    spool = instance.root / "spool"
    spool.mkdir()
    pool = instance.start_pool(1, "--burst")
    _, err = pool.communicate(timeout=60)
    first = err.splitlines()[0]
    assert first.startswith("queuectl: pool ") and f"spool {spool}" in first, err


# --- another tool's config.yaml -----------------------------------------------------------------


def test_another_tools_config_yaml_is_passed_over(instance, tmp_path):
    folder = tmp_path / "webapp"
    folder.mkdir()
    (folder / "config.yaml").write_text("name: my-web-app\nversion: 2\n")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "boom.py").write_text("raise SystemExit('must not be loaded')\n")
    env = {k: v for k, v in instance.env.items() if k != "QUEUECTL_CONFIG"}
    run = lambda *args: subprocess.run([*QUEUECTL, *args], cwd=folder, env=env, capture_output=True, text=True)
    assert run("enqueue", "true").returncode == 0          # creates the default store (`status` only reads)
    status = run("status")
    assert status.returncode == 0, status.stderr
    assert "is not queuectl's" in status.stdout and str(instance.root / "xdg-data") in status.stdout
    assert json.loads(run("status", "--json").stdout)["ignored_config"] == str(folder / "config.yaml")
    (folder / "plugins" / "boom.py").unlink()
    (folder / "config.yaml").write_text("name: my-web-app\ndb: other.db\n")       # a queuectl key: ours, a typo
    mixed = run("list")
    assert mixed.returncode == 2 and mixed.stderr.strip().endswith("unknown key 'name'")
    (folder / "config.yaml").write_text("db: mine.db\n")
    assert run("enqueue", "true").returncode == 0 and (folder / "mine.db").exists()
