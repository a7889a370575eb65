"""Shared fixtures: a private queue instance per test, driven through the real CLI."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUEUECTL = [sys.executable, "-m", "queuectl"]

# Short waits through configuration: the checks stay the same.
FAST_CONFIG = {
    "db": "queue.db",
    "poll-interval": 0.05,
    "recovery-interval": 0.1,
    "backoff-scale": 0.05,
    "lease-timeout": 5,
    "kill-grace": 1,
}



def run_on_pty(instance, *args, env: dict | None = None, cols: int = 80, timeout: float = 60) -> tuple[int, bytes]:
    """Run queuectl with stdin, stdout and stderr on a real pseudo-terminal of ``cols`` columns (50 rows);
    returns its exit code and everything it showed."""
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    proc = subprocess.Popen([*QUEUECTL, *map(str, args)], stdin=slave, stdout=slave, stderr=slave,
                            cwd=instance.root, env=instance.env if env is None else env, close_fds=True)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=timeout)
    os.close(master)
    return proc.returncode, seen


def describe_group(pgid: int) -> str:
    """Each process of a process group with its state, kernel wait channel, scheduling policy and
    kernel stack (where readable): what a test prints about a pool that should have exited."""
    lines = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            wchan = Path(f"/proc/{entry}/wchan").read_text()
            policy = {0: "OTHER", 1: "FIFO", 2: "RR"}.get(int(fields[38]), fields[38])
            lines.append(f"{entry} ppid {fields[1]} state {fields[0]} wchan {wchan} policy {policy}: {cmd[:120]}")
            try:
                lines.extend("    " + row for row in Path(f"/proc/{entry}/stack").read_text().splitlines()[:8])
            except OSError:
                pass
        except (OSError, ValueError, IndexError):
            continue                    # gone meanwhile
    return "\n".join(lines) or f"(no process left in group {pgid})"

def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """Poll until predicate() is truthy; generous deadlines keep slow machines green."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_for_stderr(proc: subprocess.Popen, text: str, timeout: float = 30.0) -> str:
    """Read ``proc``'s stderr (a pipe) until ``text`` shows in it; returns what was read up to there.

    For a signal's effect: the line a pool prints once it has taken the signal, instead of a sleep
    that hopes it has. What was read is kept on ``proc.stderr_seen`` (cleanup prints it too).
    """
    import select

    seen = getattr(proc, "stderr_seen", "")
    fd, deadline = proc.stderr.fileno(), time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s waiting for {text!r} on stderr:\n{seen[-4000:]}")
        if select.select([fd], [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"stderr closed (exit {proc.poll()}) before {text!r}:\n{seen[-4000:]}")
            seen += chunk.decode(errors="replace")
            proc.stderr_seen = seen
    return seen


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split() if stat else ()
        if fields and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def proc_status(pid: int) -> dict:
    """/proc/PID/status as a dict of its fields; OSError once the process is gone."""
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def signal_pending(status: dict, signum: int) -> bool:
    """Whether ``signum`` waits in a process (its thread's or the process's pending set), from proc_status."""
    return bool((int(status["SigPnd"], 16) | int(status["ShdPnd"], 16)) >> (signum - 1) & 1)


def wait_signal_taken(pids, signum: int, timeout: float = 30.0) -> None:
    """Wait until each of ``pids`` (Python processes sent ``signum``) has taken it: the signal no longer
    pending and the process asleep again, which CPython is only after running its handlers. Two of one
    signal pending at once are delivered as one; a second signal sent after this counts as a second."""
    def taken(pid: int) -> bool:
        try:
            status = proc_status(pid)
        except OSError:
            return True                                  # gone: nothing more to take
        return not signal_pending(status, signum) and status["State"][0] == "S"

    for pid in pids:
        wait_until(lambda: taken(pid), timeout, 0.01, f"process {pid} to take signal {signum}")


def startup_slack(instance: "Instance") -> float:
    """Seconds one `queuectl status` takes on this machine right now, three times over (at least 3).

    A bound on a recovery that includes starting processes is written as ``expected + slack``,
    so a loaded machine gets a bound in proportion to its speed instead of a flaky test.
    """
    took = []
    for _ in range(2):
        started = time.monotonic()
        instance.run("status")
        took.append(time.monotonic() - started)
    return max(3.0, 3 * max(took))             # never less than 3 s: a loaded machine stalls in bursts


def pids_with_env(*entries: str) -> list[int]:
    """Live processes whose environment holds every one of ``entries`` (e.g. QUEUECTL_JOB_ID=abc)."""
    needles = [b"\0" + e.encode() + b"\0" for e in entries]
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = b"\0" + fh.read() + b"\0"
        except OSError:
            continue
        if all(n in env for n in needles):
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Instance:
    """A queuectl instance in a temporary folder: config.yaml, store, plugins folder."""

    def __init__(self, root: Path, config: dict):
        self.root = root
        self.config_path = root / "config.yaml"
        self.plugins = root / "plugins"
        self.plugins.mkdir(mode=0o755)
        self.write_config(config)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        self.env.update({"QUEUECTL_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1",
                         "XDG_DATA_HOME": str(root / "xdg-data"), "XDG_CONFIG_HOME": str(root / "xdg-config")})
        self.pools: list[subprocess.Popen] = []

    def write_config(self, config: dict) -> None:
        import yaml

        self.config = dict(config)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def run(self, *args, check: bool = True, input: str | None = None, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([*QUEUECTL, *map(str, args)], cwd=self.root, env={**self.env, **(env or {})},
                              capture_output=True, text=True, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"queuectl {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def cli(self, *args, env: dict | None = None) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) of ``queuectl *args`` run in this process, in this instance's
        environment and folder: for reading the store around the command under test, which runs
        through :meth:`run`, a process of its own, without paying a process start-up per look."""
        import io
        from queuectl.cli import main
        from queuectl.queue import Queue

        out, err, code = io.StringIO(), io.StringIO(), 0
        saved, cwd = dict(os.environ), os.getcwd()
        os.environ.clear()
        os.environ.update({**self.env, **(env or {})})
        os.chdir(self.root)
        # The queues the command opens are closed after it, as its process's end would: no connection
        # of this process holds the store afterwards (a locker that wants it alone gets it).
        opened, plain_open = [], Queue.__dict__["open"]

        def open_and_keep(cls, *args, **kwargs):
            opened.append(plain_open.__func__(cls, *args, **kwargs))
            return opened[-1]

        Queue.open = classmethod(open_and_keep)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            Queue.open = plain_open
            for queue in opened:
                queue.close()
            os.environ.clear()
            os.environ.update(saved)
            os.chdir(cwd)
        return code, out.getvalue(), err.getvalue()

    def cli_json(self, *args, env: dict | None = None):
        """JSON of ``queuectl *args --json`` run in this process (a real process where
        :meth:`in_process_ok` says no): for looks around the command under test, polls above all."""
        return json.loads(self.checked_cli(*args, "--json", env=env))

    def json(self, *args, **kwargs):
        return json.loads(self.run(*args, "--json", **kwargs).stdout)

    def in_process_ok(self, env: dict | None = None) -> bool:
        """Would :meth:`cli` see what a `queuectl` process sees? Not with plugins of the instance's own
        that are not disabled (their code would run in the test process) or a PYTHONPATH of its own
        (entry points it adds)."""
        disabled = {**self.env, **(env or {})}.get("QUEUECTL_DISABLE_PLUGINS", "").split(",")
        return (self.env.get("PYTHONPATH") == os.environ.get("PYTHONPATH") and "plugins-dir" not in self.config
                and all(p.suffix != ".py" or p.stem in disabled for p in self.plugins.iterdir())
                and not (self.root / "xdg-config" / "queuectl").exists())

    def checked_cli(self, *args, env: dict | None = None) -> str:
        """stdout of ``queuectl *args`` run in this process (a real process where :meth:`in_process_ok`
        says no), which must succeed: set-up and looks around the command under test."""
        if not self.in_process_ok(env):
            return self.run(*args, env=env).stdout
        code, out, err = self.cli(*args, env=env)
        if code != 0:
            raise AssertionError(f"queuectl {' '.join(map(str, args))} exited {code}:\n{out}\n{err}")
        return out

    def enqueue(self, command: str, **fields) -> str:
        """Put a job in (set-up: the CLI run in this process, see :meth:`checked_cli`); returns its id."""
        spec = dict(fields, command=command)
        return self.checked_cli("enqueue", json.dumps(spec)).strip()

    def job(self, job_id: str, env: dict | None = None) -> dict:
        """The job's ``show --json`` (a look: the CLI run in this process, see :meth:`checked_cli`)."""
        return json.loads(self.checked_cli("show", job_id, "--json", env=env))

    def start_pool(self, count: int = 1, *args, env: dict | None = None, stderr=None) -> subprocess.Popen:
        proc = subprocess.Popen([*QUEUECTL, "worker", "start", "--count", str(count), *map(str, args)],
                                cwd=self.root, env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=stderr if stderr is not None else subprocess.PIPE, text=True,
                                start_new_session=True)
        self.pools.append(proc)
        return proc

    def pool_workers(self, proc: subprocess.Popen) -> list[int]:
        """The pids of the pool ``proc``'s registered workers (not its job-source or other helpers)."""
        from queuectl import Queue

        with Queue.open(config=str(self.config_path), env={}) as queue:
            children = set(children_of(proc.pid))
            return [w["pid"] for w in queue.workers() if w["kind"] == "worker" and w["pid"] in children]

    def wait_pool_up(self, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        """Wait until the pool ``proc`` has registered itself: from then on a SIGTERM is a clean stop."""
        from queuectl import Queue

        queue = Queue.open(config=str(self.config_path), env={})
        try:
            wait_until(lambda: proc.poll() is not None or any(
                w["kind"] == "pool" and w["pid"] == proc.pid for w in queue.workers()),
                timeout, 0.05, f"pool {proc.pid} to register")
        finally:
            queue.close()
        assert proc.poll() is None, f"pool {proc.pid} exited {proc.returncode} while starting"

    def wait_for_state(self, job_id: str, states, timeout: float = 60.0) -> dict:
        """The job's ``show --json`` once its state is one of ``states``.

        The store is polled through the Python API (a read in this process, not a CLI start-up per
        poll, which on a loaded machine costs a core); `show` through the real CLI then confirms it.
        One queue is opened for the whole wait: opening one per poll (config, plugins, connection:
        11 ms of CPU every 0.05 s, a fifth of a core per waiting test) cost more than the read. After
        an error it is opened again at the next poll (a store deleted or replaced is one: the SQLite
        store checks the file it holds every second).
        """
        from queuectl import Queue

        states = {states} if isinstance(states, str) else set(states)
        held: list = []

        def reached():
            try:
                if not held:
                    held.append(Queue.open(config=str(self.config_path), env={}))
                job = held[0].store.get_job(job_id)
            except Exception:                    # a store a test broke on purpose: the CLI decides
                job = None
                with contextlib.suppress(Exception):
                    held.pop().close()
            if job is not None and job.state not in states:
                return None                      # (None: also an id prefix, which only the CLI resolves)
            shown = self.job(job_id)
            return shown if shown["state"] in states else None

        try:
            return wait_until(reached, timeout, 0.05, f"job {job_id} to reach {states}")
        finally:
            while held:
                with contextlib.suppress(Exception):
                    held.pop().close()

    def cleanup(self) -> None:
        for proc in self.pools:
            if proc.poll() is None:
                hung = describe_group(proc.pid)     # a test that failed with its pool running: why it ran on
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
                if proc.stderr is not None and not proc.stderr.closed:
                    hung += "\n--- its stderr\n" + (getattr(proc, "stderr_seen", "") + proc.stderr.read())[-4000:]
                print(f"pool {proc.pid} still running at the end of the test:\n{hung}")


PG_URL = os.environ.get("QUEUECTL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


# Tests run in parallel (pytest-xdist), and a few restart the PostgreSQL server: every test that uses
# PostgreSQL holds this lock shared, a restart holds it exclusively (see pg_exclusive). The file is
# per server, not per checkout, so test runs of several checkouts on one machine keep out of each
# other's way too.
PG_LOCK = Path(tempfile.gettempdir()) / f"queuectl-tests-pg-{zlib.crc32(PG_URL.encode()):08x}.lock"
# flock lets shared holders in while an exclusive one waits: with tests on PostgreSQL always running
# somewhere, a restart would wait for a moment when none is (minutes). Everyone passes this turnstile
# first, and a restart holds it while it waits: tests that come later wait behind the restart.
PG_TURNSTILE = PG_LOCK.with_suffix(".turnstile")
_pg_lock_fd: list = []


def _pg_lock(mode: int) -> None:
    if not _pg_lock_fd:
        _pg_lock_fd.append(os.open(PG_LOCK, os.O_RDWR | os.O_CREAT, 0o666))
    turnstile = os.open(PG_TURNSTILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        fcntl.flock(_pg_lock_fd[0], mode)
    finally:
        os.close(turnstile)                  # closing it lets the next one through


def release_pg_lock() -> None:
    while _pg_lock_fd:
        os.close(_pg_lock_fd.pop())          # closing the file releases the lock


@contextlib.contextmanager
def pg_exclusive():
    """No other test uses PostgreSQL meanwhile (to restart the server); the shared hold comes back after."""
    held = bool(_pg_lock_fd)
    release_pg_lock()
    _pg_lock(fcntl.LOCK_EX)
    try:
        yield
    finally:
        release_pg_lock()
        if held:
            _pg_lock(fcntl.LOCK_SH)


@pytest.fixture(autouse=True)
def _pg_lock_released():
    yield
    release_pg_lock()


def require_pg():
    """psycopg and a reachable server, or skip; under CI (CI=true) fail instead. Returns psycopg.

    The test holds the PostgreSQL lock shared from here to its end.
    """
    if not _pg_lock_fd:
        _pg_lock(fcntl.LOCK_SH)
    def unavailable(reason: str):
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI: {reason}")
        pytest.skip(reason)

    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install 'queuectl[postgres]')")
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:
        unavailable(f"PostgreSQL at {PG_URL} is unreachable: {str(exc).strip().splitlines()[0]}")
    return psycopg


def pg_execute(sql: str, params=()):
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def pytest_generate_tests(metafunc):
    """Modules that set BOTH_BACKENDS = True run each `instance` test on SQLite and PostgreSQL."""
    if getattr(metafunc.module, "BOTH_BACKENDS", False) and "instance" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("only_backend")   # a test of one backend's own part
        metafunc.parametrize("backend", list(only.args) if only else ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def backend(request):
    return getattr(request, "param", "sqlite")


@pytest.fixture
def instance(tmp_path, backend):
    config = dict(FAST_CONFIG)
    schema = None
    if backend == "postgres":
        require_pg()
        schema = f"qt_{uuid.uuid4().hex[:12]}"
        config.update({"db": PG_URL, "pg-schema": schema})
    inst = Instance(tmp_path, config)
    yield inst
    inst.cleanup()
    if schema:
        pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def queue(tmp_path):
    """A Queue opened through the Python API on a private store."""
    from queuectl import Queue

    (tmp_path / "config.yaml").write_text("db: queue.db\nbackoff-scale: 0.05\npoll-interval: 0.05\n")
    q = Queue.open(config=str(tmp_path / "config.yaml"), env={})
    yield q
    q.close()


# --- scheduling: the longest tests start first ------------------------------------------------------
# Tests run in parallel (pytest-xdist, `--maxschedchunk 1`). xdist hands each worker two consecutive
# tests at the start (items 0-1, 2-3, 4-5, 6-7), then one more whenever one ends, so each worker always
# holds its running test and the next. Started last, one long test would keep a single core busy after
# the rest had finished, so the longest (by --durations; the same name's PostgreSQL parametrisation
# first) go to the front; the rest keep their order.
# The first ones are chosen for the server restart: the test that restarts PostgreSQL is item 0, and
# the rest of the first two per worker (items 2-7 with 4 workers) use no PostgreSQL (item 0's partner,
# item 1, runs after it on the same worker; pytest_collection_modifyitems moves the first tests of this
# list that use no PostgreSQL up to fill those places, whatever the number of workers). So the restart,
# which waits until no other test holds the server, comes at once, and no test waits behind it, where a
# test on PostgreSQL handed out meanwhile would sit idle until the server is back (measured: two tests
# of 14 s each that were mostly that wait, and a restart that itself waited 12 s for one of them).
SLOW_FIRST = [
    "test_postgres_e2e.py::test_four_hosts_run_every_job_once_across_a_server_restart",
    "test_postgres_e2e.py::test_idle_worker_wakes_on_notify_not_on_the_poll",
    "test_crash.py::test_sigkill_a_worker_every_2s_while_500_jobs_run",
    "test_crash.py::test_recovery_times_at_defaults",
    "test_examples.py::test_each_example_passes_its_own_tests_once_installed",
    "test_locking.py::test_workers_wait_out_a_store_locked_for_10s",
    "test_screen_limits.py::test_every_duration_option_takes_the_same_syntax_and_refuses_the_same_mistakes",
    "test_dashboard.py::test_a_job_with_many_large_attempts_keeps_its_page_and_json_small",
    "test_cli_jobs.py::test_list_filters_and_last",
    "test_cli_jobs.py::test_job_id_prefixes_everywhere",
    "test_process_death.py::test_torture_whole_group_sigkill_every_1_to_2s",
    "test_inputs.py::test_absurd_stored_rows_never_poison_a_read_or_a_worker",
    "test_dashboard.py::test_job_text_from_every_field_renders_as_text",
    "test_inputs_classes.py::test_strict_json_for_every_read_after_odd_but_valid_inputs",
    "test_properties.py::test_no_input_harms_the_queue",
    "test_inputs.py::test_absurd_stored_schedules_never_poison_a_read_and_the_good_ones_fire",
    "test_spawn.py::test_an_argv_job_is_looked_up_on_its_own_path",
    "test_dashboard.py::test_actions_from_the_pages",
    "test_spawn.py::test_each_attempt_sees_the_workers_environment_as_it_is_now_and_leaves_no_descriptor",
    "test_crash.py::test_worker_that_cannot_renew_kills_its_command_before_the_lease_expires",
    "test_scheduling.py::test_dead_dependency_kills_dependents_which_are_retryable",
    "test_screen_limits.py::test_every_json_output_gives_times_as_iso_8601_utc",
    "test_dashboard.py::test_dashboard_in_chromium",
    "test_scheduling.py::test_dependency_chain_runs_in_order",
    "test_dashboard.py::test_postgres_going_away_is_a_clear_page_and_one_line",
    "test_cli_jobs.py::test_edit_keeps_history_and_goes_through_the_validator",
    "test_scheduling.py::test_cancel_pending_and_running_process_tree",
    "test_notify.py::test_a_notifier_that_hangs_is_abandoned_and_the_other_channels_go_on",
    "test_scheduling.py::test_unique_keys_under_concurrent_enqueues_from_separate_processes",
    "test_scheduling.py::test_queue_limit_of_one_holds_across_two_pools",
    "test_spawn.py::test_a_command_gets_its_own_session_dev_null_and_only_three_descriptors",
    "test_store_faults.py::test_garbage_in_the_middle_of_the_store_gives_every_command_one_line",
    "test_dashboard.py::test_a_running_attempts_output_grows_without_gaps_or_repeats",
    "test_disk_full.py::test_a_full_disk_is_waited_out_and_nothing_is_lost_or_run_twice",
    "test_process_tree.py::test_timeout_kills_the_whole_tree_and_is_retried_like_a_failure",
    "test_scheduling.py::test_retry_completed_job_and_dlq_retry_all_with_filters",
    "test_live_output.py::test_top_shows_the_counts_the_cli_shows",
    "test_live_output.py::test_follow_piped_is_byte_exact_and_picks_one_stream",
    "test_live_output_edges.py::test_unknown_and_ambiguous_ids_are_one_line",
    "test_cli_jobs.py::test_retry_with_a_new_command_and_argv_edit",
    "test_e2e.py::test_data_survives_a_restart",
    "test_scheduling.py::test_missed_ticks_policies",
    "test_e2e.py::test_status_forgets_workers_of_a_killed_pool",
    "test_spool_batches.py::test_watchers_killed_in_the_middle_of_a_large_drop_make_exactly_one_job_per_file",
    "test_live_output.py::test_wait_all_and_queue_with_json",
    "test_live_output.py::test_wait_exit_codes",
    "test_cli_jobs.py::test_a_running_or_completed_job_cannot_be_edited",
    "test_scheduling.py::test_cron_tick_is_enqueued_once_with_two_pools",
    "test_live_output_edges.py::test_a_huge_line_without_newline_is_followed_within_the_cap",
    "test_e2e.py::test_failing_job_is_dead_after_max_retries_plus_one_with_growing_gaps",
    "test_inputs.py::test_locked_store_is_one_line",
    "test_live_output_edges.py::test_a_job_purged_while_followed_or_waited_for_ends_them_with_3",
    "test_dashboard.py::test_metrics_parse_and_match_the_store",
    "test_cli.py::test_config_precedence_and_sources",
    "test_live_output_edges.py::test_odd_bytes_are_followed_exactly_and_shown_as_valid_json",
    "test_live_output.py::test_logs_of_a_running_job_show_its_output_so_far",
    "test_process_death.py::test_whole_group_sigkill_kills_the_setsid_grandchild",
    "test_live_output_edges.py::test_follow_ends_when_a_killed_workers_job_ends",
    "test_process_death.py::test_worker_only_sigkill_kills_the_setsid_grandchild",
    "test_process_tree.py::test_kill_grace_longer_than_the_lease_is_cut_to_fit_it",
    "test_notify.py::test_the_webhook_secret_is_hidden_from_config_list_and_set",
    "test_e2e.py::test_two_pools_run_200_jobs_each_exactly_once",
    "test_scheduling.py::test_pause_and_resume",
    "test_live_output_edges.py::test_logs_attempt_n_of_the_running_attempt_shows_it",
    "test_dashboard.py::test_actions_need_the_token_and_the_same_origin",
    "test_screen.py::test_completion_scripts_and_dynamic_values",
    "test_scheduling.py::test_schedule_add_validates",
    "test_live_output_edges.py::test_nothing_to_wait_for_is_one_line_and_success",
    "test_cli_jobs.py::test_argv_runs_without_a_shell_and_a_plain_positional_is_a_command",
    "test_inputs.py::test_whole_pool_killed_leaves_no_workers_in_status_and_stop_says_so",
    "test_inputs.py::test_bad_stored_setting_logs_one_line_and_the_pool_keeps_running",
    "test_screen.py::test_color_modes_and_no_color",
    "test_screen.py::test_every_command_has_an_example_and_typed_metavars",
    "test_inputs_classes.py::test_a_burst_pool_whose_store_fails_says_so_once_and_does_not_claim_success",
    "test_scheduling.py::test_exit_code_policy",
    "test_spool.py::test_leftovers_of_dead_processes_resumed_by_three_at_once_make_one_job_each",
    "test_crash.py::test_stale_worker_after_sigstop_is_refused_and_changes_nothing",
]


def pytest_configure(config):
    """Compile the package under test once, before any test starts a `queuectl` process.

    The suite starts a thousand and more of them. With PYTHONDONTWRITEBYTECODE set (as in CI) an
    editable install has no bytecode, so each one would compile every module it imports again (a
    third of a command's CPU time); an installed package would have been compiled by pip.
    """
    config.addinivalue_line("markers", "only_backend(name): in a BOTH_BACKENDS module, run on that backend only")
    if not hasattr(config, "workerinput"):          # the controller (or an -n0 run), not each worker
        import compileall

        compileall.compile_dir(str(ROOT / "queuectl"), quiet=1)
        if config.getoption("numprocesses", None):
            _rewrite_test_modules_once(config)


def _rewrite_test_modules_once(config) -> None:
    """Write pytest's cache of the rewritten test modules once, in the controller, before the workers
    start (``-n``).

    pytest rewrites the asserts of each test module as it imports it, and caches the result only when
    bytecode may be written. With PYTHONDONTWRITEBYTECODE set (as in CI) every worker rewrote and
    compiled all of them again: 3.4 s of CPU per worker (7.4 s of its 9 s collection with hypothesis'
    modules), before its first test. A worker reads the cache whenever it is there and checks it
    against the source, so a stale or missing one is rewritten as before. The calls are pytest's own
    (private ones): on a pytest that lacks them the workers simply rewrite as they did.
    """
    if config.getoption("assertmode", "rewrite") != "rewrite" or not sys.dont_write_bytecode:
        return                          # not rewriting, or the workers write the cache themselves
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        for path in sorted(Path(__file__).parent.glob("*.py")):
            if path.name != "conftest.py" and not any(path.match(p) for p in config.getini("python_files")):
                continue
            cache_dir = rewrite.get_cache_dir(path)
            pyc = cache_dir / (path.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(path, pyc, state.trace) is None and rewrite.try_makedirs(cache_dir):
                key, code = rewrite._rewrite_test(path, config)
                rewrite._write_pyc(state, code, key, pyc)
    except Exception:                   # only a speed-up: the workers rewrite what is not cached
        pass


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: three test processes per core. Most of a test's time is spent waiting for the
    processes it drives (a pool running its jobs, a server coming back), so a core has room for more
    than one test: measured on 2 cores, 122 tests of scheduling, jobs and end-to-end runs took 140 s
    and 143 s with 4 processes against 195 s and 159 s with 2, in alternating runs. The whole suite
    with 4 kept the 2 cores busy 76% of its 362 s (552 s of CPU): a test used 0.38 of a core on
    average, so 4 left a quarter of the machine idle. With 6 the machine had under 10 s of idle CPU
    per run (measured while other work shared it; a quiet A/B against `-n 4` is still to do)."""
    return max(2, 3 * (os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    rank = {name: n for n, name in enumerate(SLOW_FIRST)}

    def key(item):
        name = f"{Path(item.fspath).name}::{item.originalname}"
        # within one slow test, PostgreSQL's parametrisation first (it takes longer)
        return rank.get(name, len(rank)), "postgres" not in item.name

    slow = sorted((item for item in items if key(item)[0] < len(rank)), key=key)
    # The first two tests per worker are handed out at once; only the first (the restart) and its
    # partner may use PostgreSQL: the next that do not move up in front of those that do.
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    head, rest = slow[:2], slow[2:]
    clean = [item for item in rest if "postgres" not in item.nodeid][:2 * workers - 2]
    slow = head + clean + [item for item in rest if item not in clean]
    items[:] = slow + [item for item in items if key(item)[0] == len(rank)]
