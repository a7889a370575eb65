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


@pytest.fixture
def odd_slack():
    """A Slack stand-in that redirects /moved and trickles its answer to /slow a byte every 0.3 s."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.3)

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_redirect_is_not_followed_and_a_trickled_answer_is_cut_at_the_timeout(tmp_path, odd_slack):
    (tmp_path / "config.yaml").write_text(f"db: queue.db\nslack-webhook-url: {odd_slack}/moved\n")
    moved = queuectl(tmp_path, "slack", "test")
    assert moved.returncode == 1 and "Slack answered 302" in moved.stderr and "not followed" in moved.stderr
    (tmp_path / "config.yaml").write_text(f"db: queue.db\nslack-webhook-url: {odd_slack}/slow\nwebhook-timeout: 1\n")
    start = time.monotonic()
    slow = queuectl(tmp_path, "slack", "test")
    assert slow.returncode == 1 and "no whole answer within 1s" in slow.stderr, slow.stderr
    assert time.monotonic() - start < 20          # 100 bytes at 0.3 s each would take 30 s


def test_the_url_is_a_secret_and_events_are_checked(tmp_path):
    (tmp_path / "config.yaml").write_text("db: queue.db\nslack-webhook-url: https://hooks.slack.com/services/T0/B0/secret\n")
    listed = queuectl(tmp_path, "config", "list")
    assert listed.returncode == 0 and "T0/B0/secret" not in listed.stdout and "slack-webhook-url" in listed.stdout
    for key, value in (("slack-events", "[dead, exploded]"), ("slack-webhook-url", "ftp://x")):
        (tmp_path / "config.yaml").write_text(f"db: queue.db\n{key}: {value}\n")
        bad = queuectl(tmp_path, "list")
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and key in bad.stderr, bad.stderr
