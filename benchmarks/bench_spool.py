"""Figure 7: 5,000 job files dropped at once into a spool folder watched by `queuectl spool watch`.

Runs benchmarks/spool_bench.py's measurement twice: the files renamed into place in one burst
(every dotfile written first: the rate is the watcher's), and written then renamed one by
one (the rate is also bounded by how fast the benchmark creates files). Both check exactly-once:
every file is filed in done/ and makes exactly one job.
"""
from __future__ import annotations

import argparse

from . import spool_bench
from .common import Results

SECTION = "spool"
TARGET_RATE = 5000.0
DROPS = {"burst": "renamed into place at once", "each": "written and renamed one by one"}


def run(ctx) -> None:
    results: Results = ctx.results
    files = 500 if ctx.smoke else 5000
    for drop, how in DROPS.items():
        args = argparse.Namespace(files=files, workers=0, observer="native", rate=0.0, timeout=600.0, drop=drop)
        root = ctx.tmp / f"spool-{drop}"
        root.mkdir(parents=True, exist_ok=True)
        got = spool_bench.run(args, root)
        if got["jobs"] != files or got["stored_jobs"] != files:
            raise RuntimeError(f"{files} dropped files made {got['stored_jobs']} jobs, {got['jobs']} in their "
                               f"receipts (exactly once is broken)")
        rate = got["files_per_second"]
        headline = drop == "burst"
        results.add(SECTION, f"{files:,} files {how}, `spool watch`", rate, "files/s",
                    target=f">= {TARGET_RATE:,.0f} files/s" if headline else "",
                    met=rate >= TARGET_RATE if headline else None, detail=got)
        results.note(f"spool ({drop}): latency p50 {got['latency_p50_ms']} ms, p95 {got['latency_p95_ms']} ms, "
                     f"max {got['latency_max_ms']} ms from rename to enqueue; dropping took {got['drop_seconds']} s")
