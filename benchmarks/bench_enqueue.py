"""Figure 2: one `queuectl enqueue` against `python -c "import click"`, and bulk enqueue rates.

The instance has a validation plugin in its plugins folder, and the run checks that it
still refuses a job after the start-up caches are warm, and that a plugin added later is
seen at once: the caches must never skip a plugin.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .common import Instance, Results, median

SECTION = "enqueue"
TARGET_RATIO = 1.3
TARGET_BULK_RATIO = 0.4      # of a plain executemany of the same rows into the same schema
READ_COMMANDS = (("status",), ("list", "--limit", "20"), ("--help",))

VALIDATOR = '''
from queuectl import hookimpl, JobValidationError

@hookimpl
def queuectl_validate_job(job, queue):
    if "FORBIDDEN" in str(job.get("command", "")):
        raise JobValidationError("the benchmark validator refuses FORBIDDEN")
'''

LATE_VALIDATOR = VALIDATOR.replace("FORBIDDEN", "LATECOMER")


def _time_cmd(argv, env, cwd) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {proc.stderr.read()[-300:]!r}")
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def _check_validators(inst: Instance, names: tuple) -> None:
    for word in names:
        proc = inst.run("enqueue", "-c", f"echo {word}", check=False)
        if proc.returncode != 2 or "refuses" not in proc.stderr:
            raise RuntimeError(f"the plugins-folder validator did not run for {word} "
                               f"(exit {proc.returncode}: {proc.stderr.strip()})")


def run(ctx) -> None:
    results: Results = ctx.results
    samples = 8 if ctx.smoke else 30
    bulk = 5_000 if ctx.smoke else 100_000
    inst = Instance(ctx.tmp / "enqueue", plugins={"bench_validator": VALIDATOR})
    click_argv = [sys.executable, "-c", "import click"]

    # First call with empty caches (what a fresh install or a changed environment costs).
    inst.run("init")
    cold = inst.time_run("enqueue", "-c", "true")
    # The caches take only sources that have been unchanged for a moment (see queuectl/_cache.py).
    time.sleep(max(0.0, 2.1 - (time.time() - os.stat(inst.config_path).st_ctime)))
    enqueue_argv = [*inst.cmd, "enqueue", "-c", "true"]
    for _ in range(3):
        _time_cmd(enqueue_argv, inst.env, inst.root)
        _time_cmd(click_argv, inst.env, inst.root)
    ours, ref, ours_cpu, ref_cpu = [], [], [], []
    for _ in range(samples):                 # interleaved, so drift hits both alike
        wall, cpu = _time_cmd(enqueue_argv, inst.env, inst.root)
        ours.append(wall)
        ours_cpu.append(cpu)
        wall, cpu = _time_cmd(click_argv, inst.env, inst.root)
        ref.append(wall)
        ref_cpu.append(cpu)
    _read_commands(results, inst, samples, click_argv)
    nocache = [inst.time_run("enqueue", "-c", "true", env={"QUEUECTL_NO_CACHE": "1"})
               for _ in range(max(3, samples // 3))]
    _check_validators(inst, ("FORBIDDEN",))
    inst.add_plugin("late_validator", LATE_VALIDATOR)            # a new plugin: seen at once
    _check_validators(inst, ("FORBIDDEN", "LATECOMER"))
    ratio = median(ours) / median(ref)
    results.add(SECTION, "one `queuectl enqueue -c true`", median(ours) * 1000, "ms",
                reference=median(ref) * 1000, reference_name='python -c "import click"', ratio=ratio,
                target=f"<= {TARGET_RATIO}x", met=ratio <= TARGET_RATIO,
                detail={"samples": samples, "enqueue_ms": [t * 1000 for t in ours],
                        "click_ms": [t * 1000 for t in ref], "first_call_empty_cache_ms": cold * 1000,
                        "no_cache_median_ms": median(nocache) * 1000,
                        "cpu_ratio": median(ours_cpu) / median(ref_cpu),
                        "enqueue_cpu_ms": median(ours_cpu) * 1000, "click_cpu_ms": median(ref_cpu) * 1000,
                        "best_ratio": min(ours) / min(ref)})
    results.note(f"enqueue vs click: CPU time ratio {median(ours_cpu) / median(ref_cpu):.2f} "
                 f"({median(ours_cpu) * 1000:.1f} / {median(ref_cpu) * 1000:.1f} ms), fastest-run ratio "
                 f"{min(ours) / min(ref):.2f}")
    results.note(f"enqueue with QUEUECTL_NO_CACHE=1: {median(nocache) * 1000:.1f} ms; first call with "
                 f"empty caches: {cold * 1000:.1f} ms")

    # Bulk: the Python API batch call, in this process, against the same rows written by a plain
    # executemany into the same schema (no validation, no Job objects: what SQLite itself costs).
    inst.reset_store()
    inst.queue.store  # noqa: B018 - open the store before timing
    specs = [{"command": "true"} for _ in range(bulk)]
    start = time.perf_counter()
    ids = inst.queue.enqueue_many(specs)
    api_s = time.perf_counter() - start
    if len(ids) != bulk or inst.counts().get("pending") != bulk:
        raise RuntimeError("bulk enqueue through the API stored the wrong number of jobs")
    plain = plain_executemany(inst, bulk)
    rate = bulk / api_s
    results.add(SECTION, f"bulk {bulk:,} jobs, Queue.enqueue_many", rate, "jobs/s", reference=plain,
                reference_name="plain executemany", ratio=rate / plain, target=f">= {TARGET_BULK_RATIO}",
                met=rate / plain >= TARGET_BULK_RATIO, detail={"seconds": api_s})

    # Bulk: the CLI, from a file and from stdin (JSON lines); wall time includes start-up.
    jobs_file = inst.root / "jobs.jsonl"
    jobs_file.write_text("".join(json.dumps({"command": "true"}) + "\n" for _ in range(bulk)))
    for label, args, stdin in (("--file FILE", ("--file", jobs_file), None),
                               ("--file -", ("--file", "-"), jobs_file.read_text())):
        inst.reset_store()
        inst.run("init")
        start = time.perf_counter()
        proc = inst.run("enqueue", *args, input=stdin)
        wall = time.perf_counter() - start
        if len(proc.stdout.split()) != bulk or inst.counts().get("pending") != bulk:
            raise RuntimeError(f"bulk enqueue {label} stored the wrong number of jobs")
        rate = bulk / wall
        results.add(SECTION, f"bulk {bulk:,} jobs, `queuectl enqueue {label}`", rate, "jobs/s", reference=plain,
                    reference_name="plain executemany", ratio=rate / plain, target=f">= {TARGET_BULK_RATIO}",
                    met=rate / plain >= TARGET_BULK_RATIO, detail={"seconds": wall})
    inst.close()


def _read_commands(results: Results, inst: Instance, samples: int, click_argv: list) -> None:
    """`status`, `list`, `--help` against `import click`, interleaved the same way."""
    for args in READ_COMMANDS:
        argv = [*inst.cmd, *args]
        _time_cmd(argv, inst.env, inst.root)
        ours, ref = [], []
        for _ in range(samples):
            ours.append(_time_cmd(argv, inst.env, inst.root)[0])
            ref.append(_time_cmd(click_argv, inst.env, inst.root)[0])
        ratio = median(ours) / median(ref)
        results.add(SECTION, f"`queuectl {' '.join(args)}`", median(ours) * 1000, "ms", reference=median(ref) * 1000,
                    reference_name='python -c "import click"', ratio=ratio, target=f"<= {TARGET_RATIO}x",
                    met=ratio <= TARGET_RATIO, detail={"samples": samples, "best_ratio": min(ours) / min(ref)})


def plain_executemany(inst: Instance, count: int) -> float:
    """Rows/s of one executemany of ``count`` ready-made job rows into a fresh store of the same schema,
    in one transaction, with the store's own connection settings: the floor under any bulk enqueue."""
    import sqlite3

    from queuectl.models import Job

    inst.reset_store()
    inst.queue.store  # noqa: B018 - create the schema
    store = inst.queue.store
    now = time.time()
    rows = [store._row(Job(id=os.urandom(8).hex(), command="true", state="pending", max_retries=3, created_at=now,
                           updated_at=now, run_at=now, cwd=str(inst.root))) for _ in range(count)]
    conn = sqlite3.connect(str(inst.db), isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(store.INSERT_JOB, rows)
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    inst.reset_store()
    return count / seconds
