"""The screen at its limits: narrow terminals, wide and invisible characters, hostile text, $COLUMNS,
TERM=dumb; the one duration syntax and the other inputs people get wrong, each refused in one line
with nothing queued harmed; completion in a real interactive bash."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from conftest import run_on_pty
from test_screen import ANSI, columns_of

CJK = "echo 漢字のコマンドはとても長いですがどうなりますか"
EMOJI = "echo 🎉 party e\u0301 family \u200b x"
HOSTILE = "echo \x1b]52;c;ZXZpbA==\x07 \u202egnp.exe \x1b[2J done"


def screen(instance, *args, cols: int, env: dict | None = None) -> list[str]:
    """The lines queuectl shows on a pseudo-terminal of ``cols`` columns (colors left in)."""
    full_env = {**{k: v for k, v in instance.env.items() if k != "NO_COLOR"}, "TERM": "xterm-256color", **(env or {})}
    code, out = run_on_pty(instance, *args, env=full_env, cols=cols)
    assert code == 0, out.decode(errors="replace")
    return out.decode().replace("\r\n", "\n").strip("\n").split("\n")


@pytest.fixture
def varied(instance):
    instance.run("enqueue", "--id", "cjk", "--label", "k=日本語のラベル", CJK)
    instance.run("enqueue", "--id", "emoji", "--label", "e=🎉🎉", EMOJI)
    instance.run("enqueue", "--id", "hostile", HOSTILE)
    instance.run("enqueue", "--id", "build-web-frontend-2026", "--queue", "ci", "--delay", "1h",
                 "make -C site build && rsync -a site/ /srv/www/ --delete")
    return instance


@pytest.mark.parametrize("cols", [20, 40, 80])
def test_no_line_is_wider_than_the_terminal_and_the_command_stays(varied, cols):
    lines = screen(varied, "list", cols=cols)
    assert len(lines) == 5 and all(columns_of(line) <= cols for line in lines), [columns_of(x) for x in lines]
    header = ANSI.sub("", lines[0]).split()
    assert header[0] == "ID" and ("COMMAND" in header or cols < 40 and header[-1].startswith("COMM"))
    rows = {ANSI.sub("", line).split()[0].rstrip("…"): ANSI.sub("", line) for line in lines[1:]}
    assert "echo" in rows["cjk"] and "make" in next(r for k, r in rows.items() if "build-web-frontend-2026".startswith(k))


def test_at_80_columns_the_command_stays_readable_and_ids_whole_before_errors_show(instance):
    """Errors and labels give way before the command shrinks below its comfortable width."""
    ids = [instance.enqueue(f"make -C site deploy TARGET=production-{n} && ./notify.sh --channel ops",
                            max_retries=0, labels={"team": "web"}) for n in range(2)]
    pool = instance.start_pool(1, "--burst")         # make finds no site/: both die, with an error
    assert pool.wait(timeout=60) == 0
    instance.run("enqueue", "--label", "team=data", "python3 etl.py --from 2026-11-01 --to 2026-11-30")
    for cols, shows_labels in ((80, True), (200, True)):
        lines = [ANSI.sub("", line) for line in screen(instance, "list", cols=cols)]
        header = lines[0].split()
        assert all(columns_of(line) <= cols for line in lines)
        command_at = lines[0].index("COMMAND")
        for line in lines[1:]:
            assert line.split()[0] in ids or len(line.split()[0]) == 16     # no id cut
            assert columns_of(line[command_at:].rstrip("…")) >= 20, line
        assert ("LABELS" in header) == shows_labels
    wide = [ANSI.sub("", line) for line in screen(instance, "list", cols=200)]
    assert "ERROR" in wide[0].split()      # a wide terminal shows every column


def test_wide_and_zero_width_characters_keep_the_columns_aligned(varied):
    lines = [ANSI.sub("", line) for line in screen(varied, "list", cols=80)]
    at = columns_of(lines[0][:lines[0].index("UPDATED")])
    for line in lines[1:]:
        cell = re.search(r"(now|\d+[smhd] ago)", line)
        assert cell and columns_of(line[:cell.start()]) == at, (line, at)


def test_hostile_text_is_escaped_in_tables_and_exact_in_pipes(varied):
    shown = "\n".join(screen(varied, "list", "--grep", "gnp", cols=200))
    assert "\x1b]52" not in shown and "\u202e" not in shown and "\x1b[2J" not in shown
    assert "\\x1b]52;c;ZXZpbA==\\x07 \\u202egnp.exe \\x1b[2J done" in shown
    assert HOSTILE in varied.run("list", "--grep", "gnp").stdout


def test_columns_counts_only_where_the_terminal_has_no_size(varied):
    wide = screen(varied, "list", cols=80, env={"COLUMNS": "200"})        # stale $COLUMNS: the terminal wins
    assert all(columns_of(line) <= 80 for line in wide)
    sizeless = screen(varied, "list", cols=0, env={"COLUMNS": "40"})      # a terminal that does not know
    assert all(columns_of(line) <= 40 for line in sizeless) and any(columns_of(line) > 30 for line in sizeless)
    piped = varied.run("list", env={"COLUMNS": "40"}).stdout               # a pipe is never fitted
    assert CJK in piped and max(map(columns_of, piped.splitlines())) > 40


def test_term_dumb_has_no_color_and_still_fits(varied):
    lines = screen(varied, "list", cols=40, env={"TERM": "dumb"})
    assert not any("\x1b[" in line for line in lines) and all(columns_of(line) <= 40 for line in lines)


def test_a_bad_color_mode_is_one_line_from_flag_or_environment(varied):
    for args, env in ((["--color", "sometimes"], {}), ([], {"QUEUECTL_COLOR": "sometimes"})):
        proc = varied.run(*args, "list", env=env, check=False)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "\x1b[" in varied.run("list", env={"QUEUECTL_COLOR": "ALWAYS"}).stdout


def test_status_jobs_line_wraps_at_the_terminal_width(instance):
    instance.run("enqueue", "true")
    lines = screen(instance, "status", cols=40)
    at = next(i for i, line in enumerate(lines) if line.startswith("jobs:"))
    counts = [ANSI.sub("", line) for line in lines[at:at + 3]]
    assert all(columns_of(line) <= 40 for line in counts) and counts[1].startswith(" " * 9), counts
    assert "cancelled 0" in " ".join(ANSI.sub("", x) for x in lines[at:at + 4])
    assert "cancelled 0" in next(x for x in instance.run("status").stdout.splitlines() if x.startswith("jobs:"))


def test_logs_headers_are_human_on_a_terminal_and_iso_in_pipes(instance):
    instance.run("enqueue", "--id", "fails", "--max-retries", "0", "echo out; exit 3")
    instance.run("worker", "start", "--burst")
    header = ANSI.sub("", screen(instance, "logs", "fails", cols=80)[0])
    assert re.fullmatch(r"=== attempt 1: failed \(exit 3\) in \d+ms, started (now|\d+s ago): exit code 3", header), header
    piped = instance.run("logs", "fails").stdout.splitlines()[0]
    assert re.fullmatch(r"=== attempt 1: failed \(exit 3\) in \d+ms, started \d{4}-\d\d-\d\dT[\d:.]+Z: exit code 3",
                        piped), piped


# --- the inputs people get wrong: one line, exit 2, nothing queued harmed ---------------------------


BAD_DURATIONS = ["-1s", "1e9s", "P1D", "1y", "10M", "1h2h", "30m1h", "10m5", "5 10", "", "nan", "inf",
                 "9" * 400 + "s", "99999999999999999999"]
GOOD_DURATIONS = {"0": 0, "90": 90, "10 m": 600, "1h 30m": 5400, "1.5h": 5400, "1w2d": 777600, " 2d ": 172800}


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_parse_duration_refuses(text):
    from queuectl.models import parse_duration

    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_accepts():
    from queuectl.models import parse_duration

    assert {text: parse_duration(text) for text in GOOD_DURATIONS} == GOOD_DURATIONS


#: Every option that is a span of time, with what it needs around it to run.
DURATION_OPTIONS = [
    ["enqueue", "--timeout", "{}", "true"], ["enqueue", "--delay", "{}", "true"],
    ["edit", "keep", "--timeout", "{}"], ["retry", "keep", "--timeout", "{}"],
    ["wait", "keep", "--timeout", "{}"], ["top", "--interval", "{}"], ["purge", "--state", "dead", "--older-than", "{}"],
    ["list", "--since", "{}"], ["dlq", "retry", "--all", "--since", "{}"],
    ["schedule", "add", "s", "--cron", "* * * * *", "--command", "true", "--timeout", "{}"],
    ["config", "set", "timeout", "{}"],
]


def test_every_duration_option_takes_the_same_syntax_and_refuses_the_same_mistakes(instance):
    instance.run("enqueue", "--id", "keep", "--max-retries", "0", "exit 1")
    instance.run("worker", "start", "--burst")
    before = instance.run("list", "--json").stdout
    for template in DURATION_OPTIONS:
        for text in ("1h2h", "10M", "5 10"):
            args = [a.replace("{}", text) for a in template]
            proc = instance.run(*args, check=False)
            err = proc.stderr
            assert proc.returncode in (1, 2) and len(err.strip().splitlines()) == 1, (args, proc.returncode, err)
            assert "duration" in err or "--since" in err, (args, err)
    assert instance.run("list", "--json").stdout == before and instance.json("schedule", "list") == []
    assert instance.run("enqueue", "--timeout", "1h 30m", "--id", "t", "true").stdout.strip() == "t"
    assert instance.job("t")["timeout"] == 5400


def test_since_in_the_future_and_impossible_label_filters_are_refused(instance):
    instance.run("enqueue", "--id", "one", "--label", "a=b=c", "true")
    assert instance.json("list", "--label", "a=b=c")[0]["labels"] == {"a": "b=c"}   # only the first = splits
    for args in (["--since", "2999-01-01T00:00:00Z"], ["--label", "=x"], ["--label", ""], ["--last", "0"]):
        proc = instance.run("list", *args, check=False)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, (args, proc.stderr)
    assert "in the future" in instance.run("list", "--since", "2999-01-01T00:00:00Z", check=False).stderr
    assert instance.run("list", "--since", "0").stdout == "no jobs\n"


def test_a_prefix_that_is_another_jobs_whole_id(instance):
    for job_id in ("ab", "abc", "abd"):
        instance.run("enqueue", "--id", job_id, "true")
    assert instance.json("show", "ab")["id"] == "ab"                   # an exact id wins
    assert instance.json("show", "abc")["id"] == "abc"
    for command in (["show"], ["cancel"], ["logs"], ["edit", "--timeout", "5"], ["wait", "--timeout", "1"]):
        proc = instance.run(command[0], "a", *command[1:], check=False)
        assert proc.returncode == 2 and proc.stderr.strip().endswith("is ambiguous: ab, abc, abd"), proc.stderr
    assert [j["state"] for j in instance.json("list")] == ["pending"] * 3


def test_schedule_add_refuses_what_fits_no_tick(instance):
    instance.run("init")
    for option in (["--run-at", "2030-01-01T00:00:00Z"], ["--id", "x"], ["--after", "x"]):
        proc = instance.run("schedule", "add", "s", "--cron", "* * * * *", "--command", "true", *option, check=False)
        assert proc.returncode == 2 and "No such option" in proc.stderr, proc.stderr
    assert instance.json("schedule", "list") == []


# --- completion in a real interactive bash --------------------------------------------------------


class Shell:
    """An interactive bash on a pseudo-terminal: type, then wait for what it shows."""

    def __init__(self, instance):
        env = dict(instance.env, PATH=os.path.dirname(sys.executable) + os.pathsep + instance.env["PATH"],
                   PS1="$ ", TERM="xterm", INPUTRC="/dev/null")
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=slave, stdout=slave, stderr=slave,
                                     cwd=instance.root, env=env, start_new_session=True, close_fds=True)
        os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not shown; the shell showed:\n{self.text()}\n{self.text()[-80:]!r}")
            if select.select([self.master], [], [], 0.1)[0]:
                self.seen += os.read(self.master, 65536)
        return self.text()

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.seen.decode(errors="replace")).replace("\r", "").replace("\x07", "")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)
        os.close(self.master)


def test_bash_completes_ids_states_queues_and_schedules(instance):
    if subprocess.run(["bash", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no bash")
    for job_id, queue in (("alpha-1", "ci"), ("alpha-2", "ci"), ("beta-7", "nightly")):
        instance.run("enqueue", "--id", job_id, "--queue", queue, "true")
    instance.run("schedule", "add", "backup-db", "--cron", "0 2 * * *", "--command", "true")
    shell = Shell(instance)
    try:
        shell.type('eval "$(queuectl completion bash)"; echo LOADED\n')
        shell.expect(r"\nLOADED\n")
        cases = [("queuectl show be", "queuectl show beta-7 "),            # one match: completed in place
                 ("queuectl list --state canc", "queuectl list --state cancelled "),
                 ("queuectl wait --queue nig", "queuectl wait --queue nightly "),
                 ("queuectl schedule remove back", "queuectl schedule remove backup-db "),
                 ("queuectl enqueue --after beta-7,alpha-", "queuectl enqueue --after beta-7,alpha-")]
        for number, (typed, shown) in enumerate(cases):
            shell.type(typed + "\t")
            shell.expect(re.escape(shown))
            shell.type("\x15" + f"echo DONE{number}\n")                  # Ctrl-U clears the line
            shell.expect(rf"\nDONE{number}\n")
        shell.type("queuectl cancel alph\t")
        shell.expect(r"queuectl cancel alpha-")                            # two matches: their common part
        shell.type("\t\t")
        shell.expect(r"alpha-1\s+alpha-2")                                 # and, on a double Tab, both
    finally:
        shell.close()


# --- one format for times in all JSON -------------------------------------------------------------


def epoch_like(value, path="") -> list[str]:
    """Where ``value`` holds a number that reads as a Unix time (2001..2286), or a time-named field
    that is not an ISO-8601 UTC text."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith(("_at", "_try")) or key in ("at", "next_run", "last_tick"):
                if item is not None and not (isinstance(item, str) and re.fullmatch(
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item)):
                    found.append(f"{path}.{key}={item!r}")
            found += epoch_like(item, f"{path}.{key}")
    elif isinstance(value, list):
        for number, item in enumerate(value):
            found += epoch_like(item, f"{path}[{number}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and 1e9 <= value < 1e10:
        found.append(f"{path}={value!r}")
    return found


def test_every_json_output_gives_times_as_iso_8601_utc(instance):
    import json

    instance.run("enqueue", "--id", "gone", "--max-retries", "0", "--label", "team=ops", "exit 3")
    instance.run("enqueue", "--id", "runs", "until [ -e release ]; do sleep 0.05; done")
    instance.run("enqueue", "--id", "later", "--delay", "1h", "--queue", "ci", "true")
    instance.run("schedule", "add", "nightly", "--cron", "0 2 * * *", "--command", "true")
    instance.run("queue", "limit", "ci", "2")
    instance.run("edit", "later", "--label", "k=v")
    pool = instance.start_pool(1)
    try:
        instance.wait_for_state("runs", "processing")
        instance.wait_for_state("gone", "dead")
        outputs = {" ".join(args): json.loads(instance.run(*args, "--json", check=False).stdout) for args in (
            ["list"], ["show", "gone"], ["show", "later"], ["status"], ["dlq", "list"], ["schedule", "list"],
            ["queue", "list"], ["config", "list"], ["stats"], ["plugins"], ["notify", "list"], ["logs", "gone"],
            ["logs", "runs"], ["wait", "gone"])}          # wait exits 3: gone is dead
    finally:
        (instance.root / "release").touch()      # the running job ends, so the pool stops at once
        pool.terminate()
        pool.wait(timeout=60)
    assert outputs["status"]["workers"] and outputs["status"]["running"]
    assert outputs["show later"]["edits"] and outputs["schedule list"][0]["next_run"]
    bad = {name: epoch_like(data) for name, data in outputs.items() if epoch_like(data)}
    assert not bad, bad


# --- another tool's config.yaml that is not even a YAML mapping -----------------------------------


@pytest.mark.parametrize("content", [b"- a\n- b\n", b"just a string\n", b"replicas: {{ .Values.replicas }}\n",
                                     b"key: [unclosed\n", b"\tname: tab\n", b"\xff\xfe binary"])
def test_an_unreadable_config_yaml_of_another_tool_is_passed_over(instance, tmp_path, content):
    folder = tmp_path / "chart"
    folder.mkdir()
    (folder / "config.yaml").write_bytes(content)
    env = {k: v for k, v in instance.env.items() if k != "QUEUECTL_CONFIG"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "queuectl", *args], cwd=folder, env=env,
                                       capture_output=True, text=True)
    assert run("enqueue", "true").returncode == 0
    status = run("status")
    assert status.returncode == 0 and "is not queuectl's" in status.stdout, status.stderr
    assert len(run("list", "--json").stdout) > 2


@pytest.mark.parametrize("content", [b"db: [unclosed\n", b"  max_retries: 3\n- x\n", b"spool: [oops\n",
                                     b"db: \xff\n"])
def test_an_unreadable_config_yaml_that_names_a_setting_is_an_error(instance, tmp_path, content):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_bytes(content)
    env = {k: v for k, v in instance.env.items() if k != "QUEUECTL_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "queuectl", "enqueue", "true"], cwd=folder, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "config file" in proc.stderr and not (instance.root / "xdg-data").exists()
    named = subprocess.run([sys.executable, "-m", "queuectl", "--config", str(folder / "config.yaml"), "list"],
                           cwd=folder, env=env, capture_output=True, text=True)
    assert named.returncode == 2 and len(named.stderr.splitlines()) == 1
