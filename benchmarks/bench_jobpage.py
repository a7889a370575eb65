"""The one-job page's size and time for a job that ran many times and printed a lot each time.

    python -m benchmarks.bench_jobpage [--attempts 50] [--size 1048576] [--repeat 5] [--pg URL]

A real pool runs one job that prints --size bytes on stdout and fails, --attempts times (retried at
once: backoff-max 0); a real `queuectl dashboard` serves it, and each of the job page's requests is
fetched over HTTP: its bytes, and its median time over --repeat runs. To measure another checkout's
dashboard on the same kind of store, put its folder first on PYTHONPATH (its requests that do not
exist there print "-").
"""
from __future__ import annotations

import argparse
import http.cookiejar
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from benchmarks.bench_dashboard import serve, timings
from benchmarks.common import queuectl_command


def run_job(config: Path, attempts: int, size: int) -> str:
    from queuectl import Queue

    with Queue.open(config=str(config), env={}) as queue:
        job = queue.enqueue(command=f"yes 'a line of benchmark output, 40 bytes..' | head -c {size}; exit 1",
                            max_retries=attempts - 1)
    subprocess.run([*queuectl_command(), "--config", str(config), "worker", "start", "--burst"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Queue.open(config=str(config), env={}) as queue:
        job_state = queue.get(job)
        if job_state.state != "dead" or job_state.attempts != attempts:
            raise SystemExit(f"the job is {job_state.state} after {job_state.attempts} attempt(s)")
    return job


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=50)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg", help="a PostgreSQL URL (a schema of its own is made and dropped)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        config.write_text(f"db: {args.pg}\npg-schema: {schema}\n" if args.pg else f"db: {tmp}/queue.db\n")
        with open(config, "a") as f:
            f.write("backoff-max: 0\npoll-interval: 0.05\n")
        subprocess.run([*queuectl_command(), "--config", str(config), "init"], check=True, stdout=subprocess.DEVNULL)
        job = run_job(config, args.attempts, args.size)
        proc, base, token = serve(config)
        try:
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
            opener.open(f"{base}?token={token}").read()
            print(f"job {job}: {args.attempts} attempts of {args.size} bytes of stdout each")
            print(f"{'request':<42} {'bytes':>12} {'median ms':>10}")
            for label, path in [("page /jobs/ID", f"jobs/{job}"), ("page's JSON /api/jobs/ID", f"api/jobs/{job}"),
                                ("refresh /api/jobs/ID?after=N", f"api/jobs/{job}?after={args.attempts}"),
                                ("one attempt /api/jobs/ID/attempts/1", f"api/jobs/{job}/attempts/1")]:
                try:
                    median, _, size = timings(opener, base + path, args.repeat)
                    print(f"{label:<42} {size:>12,} {median:>10.1f}")
                except urllib.error.HTTPError as exc:
                    print(f"{label:<42} {'- (' + str(exc.code) + ')':>12} {'-':>10}")
        finally:
            proc.terminate()
            proc.wait()
            if args.pg:
                import psycopg
                with psycopg.connect(args.pg, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    sys.stdout.flush()


if __name__ == "__main__":
    main()
