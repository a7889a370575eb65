"""Run the queuectl benchmark suite: ``python -m benchmarks [--smoke] [--only SECTION,...]``.

Prints a table of figures, each with the reference it was measured against in the same
run, and writes them with the machine and the date as JSON to benchmarks/results/.
Exits 0 whatever the figures are; non-zero only when the suite itself breaks (a section
raises, or a correctness check inside one fails). A peer that cannot be installed or
run is reported and skipped.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):            # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import (bench_drain, bench_enqueue, bench_follow, bench_memory, bench_peers, bench_pickup,  # noqa: E402
                        bench_scale)
from benchmarks.common import ROOT, Results, machine, render_table  # noqa: E402

SECTIONS = {
    "drain": bench_drain.run,
    "enqueue": bench_enqueue.run,
    "pickup": bench_pickup.run,
    "scale": bench_scale.run,
    "memory": bench_memory.run,
    "peers": bench_peers.run,
    "follow": bench_follow.run,
}


class Context:
    def __init__(self, smoke: bool, tmp: Path, results: Results, scale_sizes=None):
        self.smoke = smoke
        self.tmp = tmp
        self.results = results
        self.scale_sizes = scale_sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (about a minute); for CI")
    parser.add_argument("--only", metavar="SECTIONS", help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--skip", metavar="SECTIONS", help="comma-separated sections to leave out")
    parser.add_argument("--out", metavar="DIR", default=str(ROOT / "benchmarks" / "results"),
                        help="where the JSON goes (default: benchmarks/results/)")
    parser.add_argument("--scale-sizes", metavar="N,N,...", help="store sizes for the scale section "
                        "(default 10000,100000,1000000; with --smoke 500,2000,5000)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args(argv)
    chosen = list(SECTIONS)
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.skip:
        skipped = {s.strip() for s in args.skip.split(",")}
        chosen = [s for s in chosen if s not in skipped]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")

    # Byte-compile queuectl as an installation does (pip compiles what it installs), so that
    # start-up is measured as users get it even where PYTHONDONTWRITEBYTECODE is set.
    import queuectl

    compileall.compile_dir(str(Path(queuectl.__file__).parent), quiet=2)
    scratch = Path(tempfile.mkdtemp(prefix="queuectl-bench-"))
    # This process opens queues too: keep its caches and data out of the user's folders.
    os.environ["XDG_CACHE_HOME"] = str(scratch / "xdg-cache")
    os.environ["XDG_DATA_HOME"] = str(scratch / "xdg-data")
    for key in [k for k in os.environ if k.startswith("QUEUECTL_")]:
        del os.environ[key]

    results = Results()
    info = machine()
    print(f"queuectl benchmarks{' (smoke)' if args.smoke else ''}: {info['date']}, {info['cpu']}, "
          f"{info['cores']} cores, Python {info['python']}, SQLite {info['sqlite']}, commit {info['commit']}",
          flush=True)
    started = time.monotonic()
    timings = {}
    for name in chosen:
        print(f"\n[{name}]", flush=True)
        section_start = time.monotonic()
        sizes = tuple(int(n) for n in args.scale_sizes.split(",")) if args.scale_sizes else None
        ctx = Context(args.smoke, scratch / name, results, sizes)
        ctx.tmp.mkdir(parents=True, exist_ok=True)
        try:
            SECTIONS[name](ctx)
        except Exception as exc:
            results.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        timings[name] = round(time.monotonic() - section_start, 1)

    print("\n" + render_table(results))
    for text in results.notes:
        print(f"note: {text}")
    for text in results.errors:
        print(f"ERROR: {text}")
    total = time.monotonic() - started
    missed = [f["name"] for f in results.figures if f["met"] is False]
    print(f"\n{len(results.figures)} figures, {sum(f['met'] is True for f in results.figures)} targets met, "
          f"{len(missed)} missed, {len(results.errors)} errors, in {total:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"{stamp}{'-smoke' if args.smoke else ''}.json"
    load = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at start {info['load_average_at_start']}, at end {load} "
          f"(other work on this machine skews the figures)")
    payload = {"machine": info, "load_average_at_end": load, "smoke": args.smoke, "sections": chosen, "seconds": round(total, 1),
               "section_seconds": timings, "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks",
                                                                *(argv if argv is not None else sys.argv[1:])]),
               "figures": results.figures, "notes": results.notes, "errors": results.errors}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {path}")
    if args.keep:
        print(f"scratch folder kept: {scratch}")
    else:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
