"""Figure 7: 5,000 job files dropped at once into a spool folder watched by `queuectl spool watch`.

Runs benchmarks/spool_bench.py's measurement (the documented drop: write a dotfile, rename it into
place) and checks exactly-once: every file is filed in done/ and makes exactly one job.
"""
from __future__ import annotations

import argparse

from . import spool_bench
from .common import Results

SECTION = "spool"
TARGET_RATE = 5000.0


def run(ctx) -> None:
    results: Results = ctx.results
    files = 500 if ctx.smoke else 5000
    args = argparse.Namespace(files=files, workers=0, observer="native", rate=0.0, timeout=600.0)
    root = ctx.tmp / "spool"
    root.mkdir(parents=True, exist_ok=True)
    got = spool_bench.run(args, root)
    if got["jobs"] != files or got["stored_jobs"] != files:
        raise RuntimeError(f"{files} dropped files made {got['stored_jobs']} jobs from {got['jobs']} files "
                           f"(exactly once is broken)")
    rate = got["files_per_second"]
    results.add(SECTION, f"{files:,} files dropped at once, `spool watch`", rate, "files/s",
                target=f">= {TARGET_RATE:,.0f} files/s", met=rate >= TARGET_RATE, detail=got)
    results.note(f"spool: latency p50 {got['latency_p50_ms']} ms, p95 {got['latency_p95_ms']} ms, "
                 f"max {got['latency_max_ms']} ms from rename to enqueue (with the backlog of {files:,})")
