#!/usr/bin/env python3
"""Drain cost of one tree next to another's, in one run: 2,000 `true` jobs, `worker start --count N --burst`.

    python benchmarks/compare_drain.py BASE_BIN NEW_BIN [--workers 2] [--trials 8]
    python benchmarks/compare_drain.py /tmp/venv-main/bin .venv/bin
    python benchmarks/compare_drain.py .venv/bin .venv/bin+worker-priority=normal --workers 1

A BIN may carry settings for its config.yaml after a ``+`` (``key=value``, several joined by ``+``),
so one tree can be compared with itself under two settings.

Each BIN is a virtualenv's bin folder with queuectl installed (its `python` and `queuectl`).
Trials alternate between the two (ABBA order), each on a fresh store. Printed per tree: jobs/s
(wall time of the pool, start-up included) and CPU time per job of the pool, its workers and
their commands (os.wait4), which a loaded machine skews much less than wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

JOBS = 2000


def drain(tree: str, workers: int) -> tuple[float, float]:
    """(jobs/s, CPU seconds) of one drain on a fresh store."""
    bin_dir, *settings = tree.split("+")
    bin_dir = os.path.abspath(bin_dir)
    folder = tempfile.mkdtemp(prefix="drain-")
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as fh:
        fh.write("db: queue.db\n" + "".join(f"{key}: {value}\n" for key, value in
                                            (setting.split("=", 1) for setting in settings)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env.update(QUEUECTL_CONFIG=config, XDG_CACHE_HOME=folder + "/cache", XDG_DATA_HOME=folder + "/data")
    subprocess.run([f"{bin_dir}/python", "-c", f"from queuectl import Queue\nq = Queue.open(config={config!r})\n"
                    f"q.enqueue_many([{{'command': 'true'}}] * {JOBS})"], cwd=folder, env=env, check=True)
    start = time.perf_counter()
    pool = subprocess.Popen([f"{bin_dir}/queuectl", "worker", "start", "--count", str(workers), "--burst"],
                            cwd=folder, env=env, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(pool.pid, 0)
    pool.returncode = 0
    took = time.perf_counter() - start
    status = subprocess.run([f"{bin_dir}/queuectl", "status", "--json"], cwd=folder, env=env,
                            capture_output=True, text=True).stdout
    if f'"completed": {JOBS}' not in status:
        raise RuntimeError(f"the drain did not complete every job: {status}")
    return JOBS / took, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    trees = {"base": args.base, "new": args.new}
    rates: dict = {name: [] for name in trees}
    cpu: dict = {name: [] for name in trees}
    for trial in range(args.trials):
        order = list(trees) if trial % 2 == 0 else list(reversed(trees))
        for name in order:
            rate, used = drain(trees[name], args.workers)
            rates[name].append(rate)
            cpu[name].append(used)
            print(f"trial {trial} {name}: {rate:.0f} jobs/s, CPU {used * 1e6 / JOBS:.0f} us/job", flush=True)
    for name in trees:
        print(f"{name} ({trees[name]}): jobs/s best {max(rates[name]):.0f} median {statistics.median(rates[name]):.0f}; "
              f"CPU/job min {min(cpu[name]) * 1e6 / JOBS:.0f} us median {statistics.median(cpu[name]) * 1e6 / JOBS:.0f} us")
    print(f"new/base: jobs/s best {max(rates['new']) / max(rates['base']):.3f} "
          f"median {statistics.median(rates['new']) / statistics.median(rates['base']):.3f}; "
          f"CPU/job min {min(cpu['new']) / min(cpu['base']):.3f} "
          f"median {statistics.median(cpu['new']) / statistics.median(cpu['base']):.3f}")


if __name__ == "__main__":
    main()
