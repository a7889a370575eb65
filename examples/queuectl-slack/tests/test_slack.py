"""queuectl-slack against a local HTTP server standing in for Slack (install first: pip install .)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

QUEUECTL = [sys.executable, "-m", "queuectl"]


@pytest.fixture
def slack():
    """A fake Slack: answers 503 to the first message, 200 after; records what it was sent."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(503 if len(received) == 1 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/services/T0/B0/x", received
    server.shutdown()
    server.server_close()


def queuectl(root, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env["QUEUECTL_CONFIG"] = str(root / "config.yaml")
    return subprocess.run([*QUEUECTL, *args], cwd=root, env=env, capture_output=True, text=True, timeout=60)


def test_a_dead_job_is_posted_to_slack_with_its_error_after_a_retry(tmp_path, slack):
    url, received = slack
    (tmp_path / "config.yaml").write_text(f"db: queue.db\nslack-webhook-url: {url}\nnotify-backoff: 0.05\n"
                                          "poll-interval: 0.05\nrecovery-interval: 0.1\n")
    plugins = {p["name"]: p for p in json.loads(queuectl(tmp_path, "plugins", "--json").stdout)}
    assert "queuectl_register_notifiers" in plugins["slack"]["hooks"]
    done = queuectl(tmp_path, "enqueue", "--command", "true").stdout.strip()
    dead = queuectl(tmp_path, "enqueue", "--command", "echo disk full >&2; exit 2", "--max-retries", "0").stdout.strip()
    pool = subprocess.Popen([*QUEUECTL, "worker", "start"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "QUEUECTL_CONFIG": str(tmp_path / "config.yaml")})
    try:
        deadline = time.monotonic() + 60
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(pool.pid, signal.SIGTERM)
        _, err = pool.communicate(timeout=60)
    assert len(received) == 2 and received[0] == received[1], err    # 503, then the same message again
    text = received[1]["text"]
    assert text.startswith(f":skull: job `{dead}` dead after attempt 1") and "exit code 2" in text
    assert "disk full" in text and done not in text
    assert "slack delivery of job.dead" in err and "Slack answered 503" in err


def test_slack_test_posts_a_message_or_says_what_is_missing(tmp_path, slack):
    url, received = slack
    (tmp_path / "config.yaml").write_text("db: queue.db\n")
    missing = queuectl(tmp_path, "slack", "test")
    assert missing.returncode == 2 and missing.stderr == "queuectl: error: slack-webhook-url is not set\n"
    (tmp_path / "config.yaml").write_text(f"db: queue.db\nslack-webhook-url: {url}\n")
    refused = queuectl(tmp_path, "slack", "test")    # the fake answers 503 to the first message
    assert refused.returncode == 1 and refused.stderr == "queuectl: error: Slack answered 503 Service Unavailable\n"
    assert queuectl(tmp_path, "slack", "test").stdout == "posted\n"
    assert received[-1] == {"text": "queuectl: test message"}
