"""The spool folder, end to end: real watchdog observers, real queuectl processes, real files.

Every wait polls for an outcome with a generous deadline; the only sleep is the slow writer's
pause, which is the scenario itself.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import FAST_CONFIG, QUEUECTL, wait_until

SPOOL_CONFIG = dict(FAST_CONFIG, **{"spool": "spool", "spool-settle": 0.3, "spool-rescan": 0.5})
CRASH_EXIT = 86


@pytest.fixture
def spool(instance) -> Path:
    instance.write_config(SPOOL_CONFIG)
    folder = instance.root / "spool"
    folder.mkdir(mode=0o700)
    return folder


def drop(folder: Path, name: str, text: str) -> None:
    """The documented way to drop a file: write a dotfile, then rename it into place."""
    temporary = folder / f".{name}.tmp"
    temporary.write_text(text)
    os.rename(temporary, folder / name)


def filed(folder: Path, subfolder: str) -> list:
    """Original names of the files filed in done/ or rejected/ (stored as DROPID_NAME)."""
    if not (folder / subfolder).is_dir():
        return []                                     # not created yet: the watcher is starting
    return sorted(name.split("_", 1)[1] for name in os.listdir(folder / subfolder) if not name.endswith(".error"))


def reason(folder: Path, name: str) -> str:
    [sidecar] = [p for p in (folder / "rejected").iterdir() if p.name.endswith(f"_{name}.error")]
    return sidecar.read_text()


def start_watch(instance, *args, env=None) -> subprocess.Popen:
    """`queuectl spool watch` in the background; returns once it says it is watching (or died)."""
    log = instance.root / f"watch-{len(instance.pools)}.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([*QUEUECTL, "spool", "watch", *map(str, args)], cwd=instance.root,
                                env={**instance.env, **(env or {})}, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    proc.log = log
    instance.pools.append(proc)
    wait_until(lambda: "watching" in log.read_text() or proc.poll() is not None, 30, message="the watcher to start")
    return proc


def wait_filed(folder: Path, count: int, subfolder: str = "done", timeout: float = 60.0) -> list:
    def enough():
        names = filed(folder, subfolder)
        return names if len(names) >= count else None
    return wait_until(enough, timeout, 0.1, f"{count} file(s) in {subfolder}/")


def test_500_files_dropped_while_a_pool_runs_make_exactly_500_jobs(instance, spool):
    with open(instance.root / "pool.log", "w") as stderr:
        instance.start_pool(2, "--spool", spool, stderr=stderr)
    names = [f"job{n:03}.yaml" for n in range(500)]
    for n, name in enumerate(names):
        drop(spool, name, f"command: echo {n}\n")
    assert wait_filed(spool, 500, timeout=120) == names
    jobs = instance.cli_json("list")
    assert sorted(job["source"] for job in jobs) == [f"spool:{name}" for name in names]
    assert sorted(job["command"] for job in jobs) == sorted(f"echo {n}" for n in range(500))
    assert os.listdir(spool / "work") == [] and os.listdir(spool / "rejected") == []
    assert "Traceback" not in (instance.root / "pool.log").read_text()


def test_files_present_at_start_are_ingested_and_status_shows_the_spool(instance, spool):
    instance.run("init")                       # status is a read command: it never creates the store
    drop(spool, "one.yaml", "command: echo one\n")
    drop(spool, "many.yaml", "jobs:\n  - command: echo a\n  - {command: echo b, max_retries: 0}\n")
    leftovers = ["README.md", ".hidden.yaml", "edit.yaml~", ".#edit.yaml", ".edit.yaml.swp", "part.yaml.tmp"]
    for name in leftovers:
        (spool / name).write_text("command: echo never\n")
    (spool / "subfolder").mkdir()
    (spool / "subfolder" / "x.yaml").write_text("command: echo never\n")
    assert instance.json("status")["plugins"]["spool"] == {"folder": str(spool.resolve()), "waiting": 2, "rejected": 0}

    start_watch(instance)
    wait_filed(spool, 2)
    jobs = {job["command"]: job for job in instance.cli_json("list")}
    assert sorted(jobs) == ["echo a", "echo b", "echo one"]
    assert jobs["echo b"]["max_retries"] == 0 and jobs["echo a"]["source"] == "spool:many.yaml"

    drop(spool, "one.yaml", "command: echo one\n")        # the same content again is a new drop
    assert wait_filed(spool, 3) == ["many.yaml", "one.yaml", "one.yaml"]
    assert [job["command"] for job in instance.cli_json("list")].count("echo one") == 2
    assert all((spool / name).exists() for name in leftovers) and (spool / "subfolder" / "x.yaml").exists()
    assert f"folder {spool.resolve()}" in instance.run("status").stdout
    assert instance.json("status")["plugins"]["spool"]["waiting"] == 0


def test_a_slow_writer_makes_one_job(instance, spool):
    instance.write_config(dict(SPOOL_CONFIG, **{"spool-settle": 5}))
    start_watch(instance)
    with open(spool / "slow.yaml", "w") as writer:
        writer.write('command: "echo slow')           # half a file: invalid YAML if it were read now
        writer.flush()
        time.sleep(1.0)                               # the scenario: the writer pauses mid-file
        assert (spool / "slow.yaml").exists(), "a half-written file was taken"
        writer.write(' writer"\n')
    assert wait_filed(spool, 1) == ["slow.yaml"]
    assert [job["command"] for job in instance.cli_json("list")] == ["echo slow writer"]
    assert os.listdir(spool / "rejected") == []


INVALID = {
    "bad-yaml.yaml": ('command: "echo\n', "line 2 column 1: invalid YAML"),
    "no-command.yaml": ("max_retries: 2\n", "a job needs a command"),
    "unknown.yaml": ("command: echo\ncolour: red\n", "unknown field 'colour'"),
    "wrong-type.yaml": ("command: echo\nmax_retries: lots\n", "max_retries must be an integer"),
    "date.yaml": ("command: echo\ntimeout: 2024-01-01\n", "timeout has the wrong type: date"),
    "too-big.yaml": ("command: echo " + "x" * 2000 + "\n", "larger than spool-max-size (1000 bytes)"),
    "alias.yaml": ("base: &b {command: echo}\njobs: [*b]\n", "line 1 column 7: YAML anchors and aliases"),
    "partial.yaml": ("jobs:\n  - command: echo fine\n  - command: 42\n", "job 2 of 2: command must be a string"),
    "a-list.yaml": ("- command: echo\n", "expected a mapping with command: or jobs:"),
    "empty.yaml": ("", "the file is empty"),
    "twice.yaml": ("command: echo one\ncommand: echo two\n", "line 2 column 1: invalid YAML: found the key 'command' twice"),
    "twice-env.json": ('{"command": "echo", "env": {"A": "1", "A": "2"}}', "found the key 'A' twice"),
}


def test_each_kind_of_invalid_file_is_rejected_with_its_reason(instance, spool, tmp_path):
    instance.write_config(dict(SPOOL_CONFIG, **{"spool-max-size": 1000}))
    expected = {name: why for name, (_, why) in INVALID.items()}
    for name, (text, _) in INVALID.items():
        drop(spool, name, text)
    target = tmp_path / "outside.yaml"
    target.write_text("command: echo outside\n")
    (spool / "link.yaml").symlink_to(target)
    os.mkfifo(spool / "fifo.yaml")                   # reading it would block forever
    expected.update({"link.yaml": "a symbolic link", "fifo.yaml": "a FIFO, not a regular file"})
    if os.geteuid() == 0:                            # only root can give a file away or make a device
        drop(spool, "foreign.yaml", "command: echo foreign\n")
        os.chown(spool / "foreign.yaml", 65534, 65534)
        expected["foreign.yaml"] = "owned by another user (uid 65534)"
        try:
            os.mknod(spool / "device.yaml", stat.S_IFCHR | 0o600, os.makedev(1, 5))   # like /dev/zero
            expected["device.yaml"] = "a character device, not a regular file"
        except PermissionError:
            pass                                     # a container without CAP_MKNOD

    counts = instance.json("spool", "scan")
    assert (counts["files"], counts["jobs"], counts["rejected"]) == (0, 0, len(expected))
    assert filed(spool, "rejected") == sorted(expected)
    for name, why in expected.items():
        assert why in reason(spool, name), name
    assert instance.cli_json("list") == []               # nothing enqueued, not even the valid half of partial.yaml
    assert target.read_text() == "command: echo outside\n"
    assert instance.json("status")["plugins"]["spool"]["rejected"] == len(expected)


def test_two_watchers_on_one_folder_make_no_duplicates(instance, spool):
    watchers = [start_watch(instance), start_watch(instance)]
    names = [f"w{n:03}.yaml" for n in range(300)]
    for name in names:
        drop(spool, name, f"command: echo {name}\n")
    assert wait_filed(spool, 300) == names
    sources = [job["source"] for job in instance.cli_json("list")]
    assert sorted(sources) == [f"spool:{name}" for name in names]
    assert os.listdir(spool / "work") == [] and os.listdir(spool / "rejected") == []
    for watcher in watchers:
        watcher.terminate()
        assert watcher.wait(timeout=30) == 0


@pytest.mark.parametrize("point, jobs_after_crash", [("CLAIM", 0), ("INSERT", 1)])
def test_a_crash_and_restart_make_exactly_one_job(instance, spool, point, jobs_after_crash):
    watcher = start_watch(instance, env={f"QUEUECTL_SPOOL_CRASH_AFTER_{point}": "1"})
    drop(spool, "once.yaml", "command: echo once\n")
    assert watcher.wait(timeout=60) == CRASH_EXIT      # killed after the claim / the insert, before the move
    assert len(os.listdir(spool / "work")) == 1 and filed(spool, "done") == []
    assert len(instance.cli_json("list")) == jobs_after_crash

    instance.start_pool(1)                             # a new process on this host resumes the file
    assert wait_filed(spool, 1) == ["once.yaml"]
    [job] = instance.cli_json("list")
    assert instance.wait_for_state(job["id"], "completed")["history"][0]["stdout"] == "once\n"
    assert len(instance.cli_json("list")) == 1 and os.listdir(spool / "work") == []


def test_leftovers_of_dead_processes_resumed_by_three_at_once_make_one_job_each(instance, spool):
    (spool / "work").mkdir(mode=0o700)
    for n in range(8):            # each scan dies on its file, half of them before the insert, half after
        folder = instance.root / f"crashed{n}"      # its own folder, so that the next scan cannot resume it
        folder.mkdir(mode=0o700)
        drop(folder, f"left{n}.yaml", f"command: echo {n}\n")
        point = "CLAIM" if n % 2 else "INSERT"
        crashed = instance.run("spool", "scan", folder, check=False, env={f"QUEUECTL_SPOOL_CRASH_AFTER_{point}": "1"})
        assert crashed.returncode == CRASH_EXIT, crashed.stderr
        [leftover] = os.listdir(folder / "work")
        os.rename(folder / "work" / leftover, spool / "work" / leftover)
    assert len(instance.cli_json("list")) == 4

    scans = [subprocess.Popen([*QUEUECTL, "spool", "scan"], cwd=instance.root, env=instance.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    assert all(scan.wait(timeout=60) == 0 for scan in scans), [scan.stderr.read() for scan in scans]
    assert filed(spool, "done") == [f"left{n}.yaml" for n in range(8)]
    assert sorted(job["command"] for job in instance.cli_json("list")) == [f"echo {n}" for n in range(8)]
    assert os.listdir(spool / "work") == [] and os.listdir(spool / "rejected") == []


@pytest.mark.parametrize("observer, rescan", [("off", 0.3), ("polling", 60)])
def test_without_native_file_events_every_file_is_still_ingested(instance, spool, observer, rescan):
    instance.write_config(dict(SPOOL_CONFIG, **{"spool-observer": observer, "spool-rescan": rescan,
                                                "spool-settle": 0.2}))
    watcher = start_watch(instance)
    assert f"file events: {observer}" in watcher.log.read_text()
    names = [f"r{n:02}.yaml" for n in range(50)]
    for name in names[:40]:
        drop(spool, name, f"command: echo {name}\n")
    for name in names[40:]:                            # written in place: read once settled
        (spool / name).write_text(f"command: echo {name}\n")
    assert wait_filed(spool, 50) == names
    assert len(instance.cli_json("list")) == 50


JSON_PLUGIN = '''
import json

from queuectl import hookimpl


@hookimpl
def queuectl_parse_job_file(path, data, queue):
    if not path.endswith(".json"):
        return None
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    return [{"command": command, "priority": 5} for command in document["run"]]
'''


def test_a_plugin_adds_a_job_file_format(instance, spool):
    (instance.plugins / "json_jobs.py").write_text(JSON_PLUGIN)
    drop(spool, "batch.json", json.dumps({"run": ["echo a", "echo b"]}))
    drop(spool, "broken.json", '{"run": [')
    drop(spool, "plain.yaml", "command: echo yaml\n")
    counts = instance.json("spool", "scan")
    assert (counts["files"], counts["jobs"], counts["rejected"]) == (2, 3, 1)
    jobs = sorted((job["command"], job["priority"], job["source"]) for job in instance.json("list"))
    assert jobs == [("echo a", 5, "spool:batch.json"), ("echo b", 5, "spool:batch.json"),
                    ("echo yaml", 0, "spool:plain.yaml")]
    assert "invalid JSON" in reason(spool, "broken.json")


def test_folder_permissions(instance, spool):
    spool.chmod(0o777)
    for args in (["spool", "scan"], ["worker", "start", "--burst"]):
        proc = instance.run(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "refusing spool folder" in proc.stderr and f"chmod o-w {spool}" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert instance.run("worker", "start", "--burst", "--no-spool").returncode == 0

    spool.chmod(0o770)
    assert "group-writable" in instance.run("spool", "scan").stderr

    fresh = instance.root / "fresh"             # the configured folder is made when missing (a DIR typed is not)
    instance.write_config(dict(instance.config, spool=str(fresh)))
    instance.run("spool", "scan")
    for folder in (fresh, fresh / "work", fresh / "done", fresh / "rejected"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_scan_of_a_folder_that_does_not_exist_is_one_line_and_creates_nothing(instance):
    typo = instance.root / "drpo"
    proc = instance.run("spool", "scan", str(typo), check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"queuectl: error: no spool folder {typo} ('queuectl spool watch' creates one)")
    assert not typo.exists()


def test_a_folder_holding_the_store_or_the_config_is_refused_as_a_spool(instance):
    # `spool scan .` in an instance's folder took queue.db, its -wal and -shm (each on its own) and
    # config.yaml for drops and moved them into rejected/: the queue's jobs with them.
    job = instance.enqueue("true")
    (instance.root / "elsewhere").mkdir()
    before = sorted(p.name for p in instance.root.iterdir())
    store = instance.root / "queue.db"
    for args, what in ((["spool", "scan", "."], f"the store ({store})"),
                       (["spool", "scan", str(instance.root)], f"the store ({store})"),
                       (["worker", "start", "--burst", "--spool", "."], f"the store ({store})"),
                       (["--db", "elsewhere/q.db", "spool", "scan", "."], f"the config file ({instance.config_path})")):
        proc = instance.run(*args, check=False)
        assert (proc.returncode, proc.stderr) == (2, f"queuectl: error: refusing spool folder {instance.root}: it "
                                                     f"holds {what}, which it would take as a job file; drop "
                                                     f"jobs into a folder of their own\n"), args
    assert sorted(p.name for p in instance.root.iterdir()) == before
    instance.write_config(dict(instance.config, spool="."))
    proc = instance.run("worker", "start", "--burst", check=False)
    assert proc.returncode == 2 and "refusing spool folder" in proc.stderr, proc.stderr
    instance.write_config({k: v for k, v in instance.config.items() if k != "spool"})
    assert instance.job(job)["state"] == "pending" and sorted(p.name for p in instance.root.iterdir()) == before
