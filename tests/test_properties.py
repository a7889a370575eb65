"""Property: no input, through any way in, harms the queue (issue 10, "Done means").

Hypothesis generates inputs through every way in: command-line flags, the JSON argument,
``--file``, spool files, the Python API, ``config set``, config.yaml and the environment. After
each one, either it was refused (one ``queuectl: error:`` line, a non-zero exit, and the jobs and
settings are exactly as before), or it was accepted and ``list --json`` (parsed strictly: no
NaN/Infinity), ``show``, ``status``, ``stats`` and a ``--burst`` worker (a real subprocess) all
still work. The CLI runs in-process through ``queuectl.cli.main`` to keep the test quick.

Sizes: QUEUECTL_PROPERTY_EXAMPLES (default 3, to stay well under a minute) examples per way and
backend. A bigger run, with its counts printed at the end (and written as JSON to
$QUEUECTL_PROPERTY_REPORT if set):

    QUEUECTL_PROPERTY_EXAMPLES=60 .venv/bin/python -m pytest -q -s tests/test_properties.py

Generated commands only ever echo or do nothing: the worker runs what is accepted.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import traceback
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import FAST_CONFIG, PG_URL, QUEUECTL, pg_execute, require_pg

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st   # noqa: E402

EXAMPLES = int(os.environ.get("QUEUECTL_PROPERTY_EXAMPLES", "3"))
WAYS = ("flags", "json", "file", "spool", "api", "config-set", "config-yaml", "environment", "commands")
COUNTS: dict = {}

NASTY = ["", " ", "0", "-1", "1", "3", "0.5", "10m", "1h30m", "90", "2d", "inf", "-inf", "nan", "NaN", "1e309",
         "1e-309", "99999999999999999999999", "-99999999999999999999", "9223372036854775808",
         "2026-12-01T02:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+00:00", "99999-01-01T00:00:00Z",
         "\x00", "\ud800", "a\x00b", "x" * 140_000, "0 0 30 2 *", "* * * * *", "none", "true", "Europe/Paris",
         "Mars/Base", "/tmp", "/no/such/dir", "75,69", "256", "-3", "null", "[]", "{}", "[" * 5000,
         "\x1b]52;c;QQ==\x07",
         # the second round (tests/test_inputs_classes.py): what a non-UTF-8 byte of a command line decodes
         # to, the edge of Unicode, control characters and separators, odd numerals, URLs, plugin names
         "\udcff", "k\udcff", "\U0010ffff", "k\U0010ffff", "a\u2028b", "\x85", "\x9b2J", "a\nb", "-0", "1_0",
         "\u0661\u0662", "0x10", " 5 ", "http://a/\r\nX: y", "http://a:99999/", "http://\udcff/", "validate",
         "dashboard,validate", "%", "_", "kept", "k", "none", "../../etc/passwd", "Factory", "5-3 * * * *"]
SETTING_KEYS = ["max-retries", "poll-interval", "lease-timeout", "heartbeat-interval", "recovery-interval",
                "timeout", "kill-grace", "lock-timeout", "backoff-base", "backoff-max", "backoff-scale",
                "backoff-jitter", "retry-exit-codes", "dead-exit-codes", "schedule-missed", "schedule-grace",
                "schedule-timezone", "schedule-interval", "output-cap", "spool-settle", "spool-rescan",
                "spool-max-size", "spool-observer", "durability", "disable-plugins", "host-id", "colour",
                "on-dead", "on-complete", "webhook-url", "webhook-secret", "webhook-events", "notify-retries"]
OPTIONS = ["--max-retries", "--timeout", "--priority", "--delay", "--run-at", "--queue", "--id", "--cwd", "--env",
           "--executor", "--unique-key", "--backoff-base", "--retry-on", "--dead-on", "--after", "--label"]
#: Commands that take ids, prefixes, filters and names (X: the generated text).
COMMANDS = [["show", "X"], ["show", "X", "--json"], ["logs", "X"], ["logs", "kept", "--attempt", "X"], ["cancel", "X"],
            ["retry", "X"], ["dlq", "retry", "X"], ["edit", "X", "--command", "true"], ["edit", "kept", "--timeout", "X"],
            ["edit", "kept", "--label", "X"], ["edit", "kept", "--env", "X"], ["list", "--grep", "X"],
            ["list", "--label", "X"], ["list", "--since", "X"], ["list", "--queue", "X"], ["list", "--last", "X"],
            ["list", "--offset", "X"], ["wait", "X", "--timeout", "1"], ["wait", "--queue", "X", "--timeout", "1"],
            ["queue", "limit", "q", "X"], ["queue", "limit", "X", "2"], ["queue", "pause", "X"],
            ["purge", "--state", "completed", "--older-than", "X"], ["dlq", "list", "--limit", "X"],
            ["schedule", "add", "X", "--cron", "* * * * *", "--command", "true"],
            ["schedule", "add", "s", "--cron", "X", "--command", "true"], ["schedule", "remove", "X"],
            ["config", "get", "X"], ["config", "unset", "X"]]
FIELDS = ["id", "max_retries", "timeout", "cwd", "env", "executor", "priority", "queue", "delay", "run_at", "after",
          "unique_key", "backoff_base", "retry_on", "dead_on", "state", "colour"]

nasty_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=12), st.integers().map(str),
                       st.floats().map(repr))
numbers = st.one_of(st.integers(), st.floats(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30))
scalars = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)
commands = st.one_of(st.sampled_from(["true", ":", "echo hi", "", "   ", "a\x00b", "\ud800", "x" * 140_000]),
                     st.text(max_size=20).map(lambda t: "echo " + shlex.quote(t)))
specs = st.fixed_dictionaries({"command": commands},
                              optional={f: json_values for f in FIELDS} | {"queue": st.sampled_from(["default", "b"])})


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def environment_text(value: str) -> bool:
    """What a process environment can hold: no NUL, and bytes (surrogate escapes at most)."""
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


class World:
    """One store and config, driven in-process; workers are real processes."""

    def __init__(self, root: Path, backend: str):
        self.root, self.backend, self.schema = root, backend, None
        self.base = dict(FAST_CONFIG, db=str(root / "queue.db"))
        if backend == "postgres":
            require_pg()
            self.schema = f"qp_{uuid.uuid4().hex[:12]}"
            self.base.update({"db": PG_URL, "pg-schema": self.schema})
        self.config_path = root / "config.yaml"
        self.write_config({})
        (root / "spool").mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        self.env.update({"QUEUECTL_CONFIG": str(self.config_path), "XDG_DATA_HOME": str(root / "data"),
                         "XDG_CACHE_HOME": str(root / "cache"), "XDG_CONFIG_HOME": str(root / "conf")})
        self.counts = COUNTS.setdefault(backend, dict.fromkeys(
            ("generated", "accepted", "refused clearly", "refused unclearly", "tracebacks", "harmed"), 0))
        self.failures: list = []

    def write_config(self, extra: dict, raw: str = "") -> None:
        self.config_path.write_text(yaml.safe_dump(self.base) + raw + (yaml.safe_dump(extra) if extra else ""))

    @contextlib.contextmanager
    def environment(self, extra=None):
        saved, cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update(self.env, **(extra or {}))
        os.chdir(self.root)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            os.chdir(cwd)

    def cli(self, *argv, env=None) -> tuple:
        """(exit code, stdout, stderr, traceback or None) of one in-process run."""
        from queuectl.cli import main

        out, err, code, trace = io.StringIO(), io.StringIO(), None, None
        with self.environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                trace = traceback.format_exc()
        if trace is None and "Traceback" in err.getvalue():
            trace = err.getvalue()
        return code, out.getvalue(), err.getvalue(), trace

    def snapshot(self, env=None):
        jobs = self.cli("list", "--json", env=env)
        settings_ = self.cli("config", "list", "--json", env=env)
        return jobs[1], settings_[1]

    def health(self, env=None) -> list:
        """What is broken after an accepted input (empty: everything works)."""
        problems = []
        code, out, err, trace = self.cli("list", "--json", env=env)
        try:
            jobs = strict_loads(out) if code == 0 else None
        except ValueError as exc:
            jobs, problems = None, [f"list --json is not strict JSON: {exc}"]
        if code != 0 or trace:
            problems.append(f"list --json exit {code}: {trace or err}")
        for job in (jobs or [])[:1] + (jobs or [])[-1:]:
            for argv in (("show", job["id"]), ("show", job["id"], "--json")):
                code, out, err, trace = self.cli(*argv, env=env)
                if code != 0 or trace:
                    problems.append(f"{' '.join(argv)} exit {code}: {trace or err}")
        for argv in (("status",), ("status", "--json"), ("stats",), ("stats", "--json"), ("list",)):
            code, out, err, trace = self.cli(*argv, env=env)
            if code != 0 or trace:
                problems.append(f"{' '.join(argv)} exit {code}: {trace or err}")
            elif argv[-1] == "--json":
                try:
                    strict_loads(out)
                except ValueError as exc:
                    problems.append(f"{' '.join(argv)} is not strict JSON: {exc}")
        proc = subprocess.run([*QUEUECTL, "worker", "start", "--burst"], cwd=self.root, capture_output=True,
                              text=True, timeout=180, env={**self.env, **(env or {})})
        if proc.returncode != 0 or "Traceback" in proc.stderr:
            problems.append(f"burst worker exit {proc.returncode}: {proc.stderr[-800:]}")
        return problems

    def judge(self, what, code, err, trace, before, env=None) -> None:
        """Count one input's outcome; remember what went wrong."""
        self.counts["generated"] += 1
        if trace:
            self.counts["tracebacks"] += 1
            self.failures.append((what, trace[-1500:]))
        elif code == 0:
            self.counts["accepted"] += 1
            problems = self.health(env)
            if problems:
                self.counts["harmed"] += 1
                self.failures.append((what, problems))
        else:
            lines = err.splitlines()
            clear = len(lines) == 1 and lines[0].startswith("queuectl: error: ")
            self.counts["refused clearly" if clear else "refused unclearly"] += 1
            if not clear:
                self.failures.append((what, f"exit {code}, stderr {err[:600]!r}"))
            self.write_config({})               # the store is judged as the base config sees it
            if self.snapshot() != before:
                self.counts["harmed"] += 1
                self.failures.append((what, "refused, yet the jobs or settings changed"))

    # --- the ways in -----------------------------------------------------------------------------

    def way_flags(self, data) -> None:
        argv = ["enqueue", "--command", data.draw(commands)]
        for option in data.draw(st.lists(st.sampled_from(OPTIONS), max_size=4, unique=True)):
            argv += [option, data.draw(nasty_text)]
        self.run_cli(argv)

    def way_commands(self, data) -> None:
        template = data.draw(st.sampled_from(COMMANDS))
        value = data.draw(nasty_text)
        argv = [value if word == "X" else word for word in template]
        before = self.snapshot()
        code, _out, err, trace = self.cli(*argv)
        if argv[0] == "wait" and code in (3, 4):   # not completed / timed out: an answer, not a refusal
            code = 0
        self.judge(" ".join(a[:60] for a in argv), code, err, trace, before)
        if template[0] == "schedule":
            self.cli("schedule", "remove", value if template[2] == "X" else "s")   # a tick per second is not harm

    def way_json(self, data) -> None:
        text = data.draw(st.one_of(specs.map(lambda s: json.dumps(s)), nasty_text,
                                   st.integers(1, 60000).map(lambda n: '{"command": ' + "[" * n)))
        self.run_cli(["enqueue", text])

    def way_file(self, data) -> None:
        lines = [json.dumps(s).encode("utf-8", "surrogatepass") for s in data.draw(st.lists(specs, min_size=1,
                                                                                           max_size=4))]
        if data.draw(st.booleans()):
            index = data.draw(st.integers(0, len(lines) - 1))
            lines[index] += data.draw(st.sampled_from([b"\xff", b"\x00", b"\xed\xa0\x80", b"}", b" NaN"]))
        path = self.root / "jobs.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        self.run_cli(["enqueue", "--file", str(path)])

    def way_spool(self, data) -> None:
        content = data.draw(st.one_of(specs.map(lambda s: yaml.safe_dump(s, allow_unicode=False)),
                                      specs.map(lambda s: json.dumps(s)), nasty_text))
        raw = content.encode("utf-8", "surrogatepass") + data.draw(st.sampled_from([b"", b"\xff", b"\x00"]))
        name = f"drop-{uuid.uuid4().hex[:8]}.{data.draw(st.sampled_from(['yaml', 'json', 'txt']))}"
        before = self.snapshot()
        (self.root / "spool" / f".{name}").write_bytes(raw)
        os.rename(self.root / "spool" / f".{name}", self.root / "spool" / name)
        code, out, err, trace = self.cli("spool", "scan", "--json")
        left = [p.name for p in (self.root / "spool").iterdir() if p.is_file() and not p.name.startswith(".")]
        left += [p.name for p in (self.root / "spool" / "work").iterdir()]
        if code == 0 and not trace and (left or not any((self.root / "spool" / f).glob(f"*{name}")
                                                        for f in ("done", "rejected"))):
            trace = f"spool file not filed in done/ or rejected/: {left}"
        rejected = any((self.root / "spool" / "rejected").glob(f"*{name}"))
        if rejected and not trace:
            self.counts["generated"] += 1
            self.counts["refused clearly"] += 1
            after = self.snapshot()
            if after != before:
                self.counts["harmed"] += 1
                self.failures.append((name, raw[:300], "rejected, yet the jobs changed", before, after))
            return
        self.judge(name, code, err, trace, before)

    def way_api(self, data) -> None:
        from queuectl import Queue
        from queuectl.errors import QueueError

        call = data.draw(st.sampled_from(["enqueue", "enqueue_many", "purge", "set_queue", "list", "attempts",
                                          "config_set", "cancel", "retry", "get"]))
        anything = st.one_of(json_values, st.just(object()), st.binary(max_size=4), st.tuples(scalars))
        args = {
            "enqueue": lambda: ((), data.draw(specs)),
            "enqueue_many": lambda: ((data.draw(st.one_of(st.lists(specs, max_size=3), anything)),), {}),
            "purge": lambda: ((data.draw(st.one_of(st.lists(st.sampled_from(["completed", "dead", "pending"]),
                                                            max_size=2), anything)), data.draw(anything)), {}),
            "set_queue": lambda: ((data.draw(st.one_of(st.just("api-q"), anything)),),
                                  {"concurrency": data.draw(anything), "paused": data.draw(st.one_of(
                                      st.none(), st.just(False), anything))}),
            "list": lambda: ((), {"limit": data.draw(anything), "offset": data.draw(st.one_of(st.just(0), anything))}),
            "attempts": lambda: ((data.draw(anything), data.draw(anything)), {}),
            "config_set": lambda: ((data.draw(st.sampled_from(SETTING_KEYS)), data.draw(anything)), {}),
            "cancel": lambda: ((data.draw(anything),), {}),
            "retry": lambda: ((data.draw(anything), data.draw(anything)), {}),
            "get": lambda: ((data.draw(anything),), {}),
        }[call]()
        before = self.snapshot()
        code, err, trace = 0, "", None
        with self.environment():
            try:
                with Queue.open() as queue:
                    getattr(queue, call)(*args[0], **args[1])
            except QueueError as exc:
                code, err = 1, f"queuectl: error: {exc}\n" if "\n" not in str(exc) else str(exc)
            except BaseException:
                trace = traceback.format_exc()
        self.judge(f"Queue.{call}{args!r}"[:300], code, err, trace, before)
        if call == "config_set" and code == 0:
            self.cli("config", "unset", args[0][0])

    def way_config_set(self, data) -> None:
        key = data.draw(st.sampled_from(SETTING_KEYS))
        self.run_cli(["config", "set", key, data.draw(nasty_text)])
        self.cli("config", "unset", key)

    def way_config_yaml(self, data) -> None:
        key = data.draw(st.sampled_from(SETTING_KEYS + ["db", "pg-schema", "plugins-dir", "lock-timeout"]))
        if data.draw(st.booleans()):
            self.write_config({key: data.draw(json_values)})
        else:
            raw = data.draw(st.sampled_from([f"{key}: &a [1, 2]\nx: *a\n", f"{key}: [[[[[[[[[[1]]]]]]]]]]\n",
                                             f"{key}: !!python/object:os.system echo\n", f"{key}: [\n",
                                             "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
                                                 f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
                                                 for p, n in zip("abcdefgh", "bcdefghi")),
                                             f"{key}: {'[' * 3000}\n", f"{key}: .inf\n", f"{key}: .nan\n"]))
            self.write_config({}, raw)
        if key in ("db", "pg-schema"):          # another store is a different queue, not a harmed one
            self.write_config({})
            return
        text = self.config_path.read_text()
        self.write_config({})
        before = self.snapshot()
        self.config_path.write_text(text)
        try:
            self.run_cli(["status"], before=before)
        finally:
            self.write_config({})

    def way_environment(self, data) -> None:
        key = data.draw(st.sampled_from(SETTING_KEYS + ["lock-timeout", "disable-plugins"]))
        value = data.draw(nasty_text.filter(environment_text))
        env = {"QUEUECTL_" + key.upper().replace("-", "_"): value}
        self.run_cli(["list"], env=env, before=self.snapshot())

    def run_cli(self, argv, env=None, before=None) -> None:
        before = self.snapshot() if before is None else before
        code, _out, err, trace = self.cli(*argv, env=env)
        self.judge(" ".join(a[:60] for a in argv), code, err, trace, before, env)

    def close(self) -> None:
        if self.schema:
            pg_execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for backend, counts in COUNTS.items():
        print(f"\nproperty counts [{backend}]: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if os.environ.get("QUEUECTL_PROPERTY_REPORT"):
        Path(os.environ["QUEUECTL_PROPERTY_REPORT"]).write_text(json.dumps(COUNTS, indent=2))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("way", WAYS)
def test_no_input_harms_the_queue(tmp_path, backend, way):
    world = World(tmp_path, backend)
    try:
        world.cli("enqueue", json.dumps({"id": "kept", "command": "true", "delay": "10d"}))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def one_input(data):
            getattr(world, "way_" + way.replace("-", "_"))(data)

        one_input()
        assert not world.failures, f"{len(world.failures)} input(s) went wrong; first: {world.failures[0]}"
        assert any(j["id"] == "kept" for j in strict_loads(world.cli("list", "--json")[1]))
    finally:
        world.close()
