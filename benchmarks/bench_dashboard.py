"""Dashboard and /metrics cost at 100,000 and 1,000,000 stored jobs.

    python -m benchmarks.bench_dashboard [--sizes 100000,1000000] [--pg postgresql://...] [--repeat 7]

For each size: a private store is filled through the store's bulk insert (Store.add_jobs, no
validation: 80% completed, 10% pending, 10% dead over three queues, plus a full day of per-minute
attempt rollups), a real `queuectl dashboard` process serves it, and each request is timed over
HTTP (median and slowest of --repeat runs, after one warm-up). "overview" is what the page loads
(the HTML and then /api/overview); job pages are the first and a deep page (keyset, 90% of the
way down), a state filter, and a text filter (a bounded scan of 20,000 rows). With Chromium and
chromedriver installed (Debian's chromium, chromium-driver) and selenium, the overview is also
loaded in headless Chromium: from navigation start to the page drawn with its data (counts, tables,
the four charts), as a person opening it waits; --no-browser skips that.
"""
from __future__ import annotations

import argparse
import http.cookiejar
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from benchmarks.common import queuectl_command

BATCH = 20000


def fill(config: Path, n: int) -> int:
    """Store n jobs in bulk; returns the seq of a job 90% of the way down (for a deep page)."""
    from queuectl import Queue
    from queuectl.models import Job

    queue = Queue.open(config=str(config), env={})
    store, now = queue.store, time.time()
    for start in range(0, n, BATCH):
        jobs = []
        for i in range(start, min(n, start + BATCH)):
            state = "pending" if i % 10 == 0 else "dead" if i % 10 == 1 else "completed"
            jobs.append(Job(id=f"job-{i:08d}", command=f"echo {'needle' if i % 1000 == 7 else 'job'} {i}",
                            state=state, created_at=now - n + i, updated_at=now - n + i, run_at=now - n + i,
                            queue=("default", "mail", "reports")[i % 3], max_retries=3))
        store.add_jobs(jobs)
    fill_series(store, now)
    queue.close()
    return int(n * 0.1)


def fill_series(store, now: float) -> None:
    """A busy day in the per-minute ring: every minute, eight duration buckets."""
    from queuectl.builtin._rows import SERIES_SLOTS

    minutes = range(int(now // 60) - SERIES_SLOTS + 1, int(now // 60) + 1)
    rows = [(m % SERIES_SLOTS, b, m, 50, 3) for m in minutes for b in range(70, 78)]
    if hasattr(store, "conn"):
        store.conn.executemany("INSERT OR REPLACE INTO run_series (slot, bucket, minute, n, failed) VALUES (?, ?, ?, ?, ?)", rows)
    else:
        with store.connect() as conn:
            conn.cursor().executemany(store.q("INSERT INTO {s}.run_series VALUES "
                                              "(%s, %s, nextval('{s}.stripes'), %s, %s, %s)"), rows)


def serve(config: Path):
    proc = subprocess.Popen([*queuectl_command(), "--config", str(config), "dashboard", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    found = re.search(r"(http://[^/]+/)\?token=(\S+)", proc.stderr.readline())
    if not found:
        proc.kill()
        raise SystemExit("the dashboard did not start")
    return proc, found.group(1), found.group(2)


def timings(opener, url: str, repeat: int) -> tuple[float, float, int]:
    opener.open(url).read()                    # warm-up
    runs, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        with opener.open(url) as response:
            size = len(response.read())
        runs.append((time.perf_counter() - start) * 1000)
    return statistics.median(runs), max(runs), size


def browser_timings(base: str, token: str, repeat: int):
    """(median, slowest) ms from navigation start to the overview drawn with its data, or None."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--window-size=1280,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    try:
        driver.get(f"{base}?token={token}")          # sets the cookie; also the warm-up
        runs = []
        for _ in range(repeat + 1):
            driver.get(base)
            deadline = time.monotonic() + 60
            while not (drawn := driver.execute_script("return document.body.dataset.drawnAt")):
                if time.monotonic() > deadline:
                    raise SystemExit("the overview was not drawn within 60 s")
                time.sleep(0.005)
            runs.append(float(drawn))
        return statistics.median(runs[1:]), max(runs[1:])
    finally:
        driver.quit()


def measure(config: Path, n: int, repeat: int, browser: bool = True) -> list[tuple]:
    start = time.perf_counter()
    deep = fill(config, n)
    filled = time.perf_counter() - start
    proc, base, token = serve(config)
    try:
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener.open(f"{base}?token={token}").read()
        rows = []
        for name, path in [("overview HTML", ""), ("overview data (/api/overview)", "api/overview"),
                           ("jobs, first page", "jobs"), ("jobs, deep page (keyset)", f"jobs?before={deep}"),
                           ("jobs, state=dead", "jobs?state=dead"),
                           ("jobs, queue=mail&state=pending", "jobs?queue=mail&state=pending"),
                           ("jobs, text filter", "jobs?q=needle"), ("DLQ", "dlq"), ("/metrics", "metrics")]:
            med, worst, size = timings(opener, base + path, repeat)
            rows.append((n, name, med, worst, size))
        drawn = browser_timings(base, token, repeat) if browser else None
        if drawn:
            rows.insert(0, (n, "overview in Chromium, drawn", *drawn, None))
        return [(n, f"(bulk insert of {n:,} jobs: {filled:.1f} s)", None, None, None)] + rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--pg", metavar="URL", help="measure on PostgreSQL (a private schema, dropped after)")
    parser.add_argument("--no-browser", action="store_true", help="skip the overview's load in Chromium")
    args = parser.parse_args(argv)
    backend = "postgresql" if args.pg else "sqlite"
    print(f"dashboard benchmark on {backend}: median and slowest of {args.repeat} requests, in ms")
    print(f"{'jobs':>9}  {'request':<34} {'median':>8} {'slowest':>8} {'bytes':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            config.write_text(f"db: {args.pg}\npg-schema: {schema}\n" if args.pg else "db: queue.db\n")
            try:
                for size, name, med, worst, length in measure(config, n, args.repeat, not args.no_browser):
                    if med is None:
                        print(f"{size:>9,}  {name}")
                    else:
                        size_text = f"{length:,}" if length else "-"
                        print(f"{size:>9,}  {name:<34} {med:8.1f} {worst:8.1f} {size_text:>8}")
            finally:
                if args.pg:
                    import psycopg

                    with psycopg.connect(args.pg, autocommit=True) as conn:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
