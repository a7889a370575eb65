"""Start-up of two trees in one run: each short command against `python -c "import click"`, interleaved.

    python benchmarks/startup_ab.py /tmp/venv-main/bin .venv/bin [--rounds 30]

For each command, every round runs it on each tree (the order alternating between rounds), each
followed by that tree's own `import click`; it prints the median ratios of wall time and of user
CPU time, and the fastest-run ratio. Each tree gets an instance like bench_enqueue's (a validator in
its plugins folder, 30 jobs stored, warm caches, byte-compiled), so the figures compare.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_enqueue import VALIDATOR  # noqa: E402
from benchmarks.common import Instance  # noqa: E402

COMMANDS = (("enqueue", "-c", "true"), ("status",), ("list", "--limit", "20"), ("--help",))


def timed(argv, inst) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=inst.env, cwd=inst.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err[-300:]!r}")
    return wall, usage.ru_utime


def instance(bin_dir: Path, folder: Path) -> Instance:
    inst = Instance(folder, plugins={"bench_validator": VALIDATOR})
    inst.cmd = [str(bin_dir / "queuectl")]
    inst.env.pop("PYTHONDONTWRITEBYTECODE", None)
    package = subprocess.run([str(bin_dir / "python"), "-c", "import os, queuectl; print(os.path.dirname("
                              "queuectl.__file__))"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([str(bin_dir / "python"), "-m", "compileall", "-q", package], check=True, env=inst.env)
    inst.run("enqueue", "--file", "-", input='{"command": "true"}\n' * 30)
    time.sleep(2.2)                      # the caches take only sources unchanged for SETTLE seconds
    for _ in range(2):
        for args in COMMANDS:
            inst.run(*args, stdout=subprocess.DEVNULL)
    return inst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bins", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = [(b, instance(b.resolve(), Path(tmp) / f"tree{i}")) for i, b in enumerate(args.bins)]
        print(f"load average {os.getloadavg()[0]:.1f}")
        for command in COMMANDS:
            samples = {b: ([], []) for b, _ in trees}
            for n in range(args.rounds + 2):
                for b, inst in (trees if n % 2 else trees[::-1]):
                    ours = timed([*inst.cmd, *command], inst)
                    ref = timed([str(b.resolve() / "python"), "-c", "import click"], inst)
                    if n >= 2:                                   # two rounds to warm up
                        samples[b][0].append(ours)
                        samples[b][1].append(ref)
            for b, (ours, ref) in samples.items():
                m = statistics.median
                print(f"{' '.join(command):18} {str(b):40} wall {m(o[0] for o in ours) / m(r[0] for r in ref):.3f}"
                      f"  user CPU {m(o[1] for o in ours) / m(r[1] for r in ref):.3f}"
                      f"  fastest {min(o[0] for o in ours) / min(r[0] for r in ref):.3f}"
                      f"  (click {m(r[0] for r in ref) * 1000:.0f} ms)", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
