"""How long a notification takes: from a job's end to the webhook's receipt.

A pool with the default settings runs `true` jobs; a webhook receiver on 127.0.0.1 (in this process)
notes when each event arrives. Latency is the receipt time minus the attempt's ``finished_at`` in the
event (recorded by the worker when the command exited; millisecond precision), so it includes
recording the attempt, writing the outbox file, the wake-up of the delivering process, the HTTP
request and the receiver's parsing. Two runs: jobs one at a time (each event alone in the outbox)
and a burst of jobs enqueued at once (events queue up behind each other).

    python -m benchmarks.bench_notify [--jobs N]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .common import Instance, percentile, stop_process, wait_for


class Receiver:
    def __init__(self):
        self.latencies: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                arrived = time.time()
                finished = json.loads(body)["attempt"]["finished_at"]
                ended = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
                receiver.latencies.append(arrived - ended)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def report(name: str, latencies: list[float]) -> None:
    ms = [v * 1000 for v in latencies]
    print(f"{name}: n={len(ms)}  p50={percentile(ms, 50):.1f} ms  p95={percentile(ms, 95):.1f} ms  "
          f"max={max(ms):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as tmp:
        inst = Instance(Path(tmp), {"webhook-url": receiver.url, "webhook-events": ["completed"]})
        inst.run("init")
        pool = inst.popen("worker", "start", "--count", 2)
        try:
            queue = inst.queue
            for i in range(args.jobs):                   # one at a time
                queue.enqueue(command="true")
                wait_for(lambda: len(receiver.latencies) > i, 30, "the event")
            report("one job at a time", receiver.latencies)
            receiver.latencies.clear()
            queue.enqueue_many([{"command": "true"} for _ in range(args.jobs)])
            wait_for(lambda: len(receiver.latencies) >= args.jobs, 120, "every event of the burst")
            report(f"burst of {args.jobs} jobs", receiver.latencies)
        finally:
            stop_process(pool)
            inst.close()


if __name__ == "__main__":
    main()
