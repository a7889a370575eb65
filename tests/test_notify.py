"""The notify plugin through real pools: webhooks against a real HTTP server, shell callbacks."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import startup_slack, wait_until

BOTH_BACKENDS = True
SECRET = "s3cret-key"


class Receiver:
    """An HTTP server on 127.0.0.1 that answers 500 to the first ``failures`` requests of each
    delivery id, and can hold requests until released."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.release.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    seen = sum(r["delivery"] == self.headers["X-Queuectl-Delivery"] for r in receiver.requests)
                    receiver.requests.append({"delivery": self.headers["X-Queuectl-Delivery"], "body": body,
                                              "headers": dict(self.headers), "failed": seen < receiver.failures})
                receiver.release.wait(60)
                self.send_response(500 if seen < receiver.failures else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests if not r["failed"]]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(failures=0):
        made.append(Receiver(failures))
        return made[-1]
    yield make
    for r in made:
        r.close()


def configure(instance, **settings):
    config = dict(instance.config, **{"notify-backoff": 0.05}, **settings)
    instance.write_config(config)


def test_webhook_retries_until_delivered_signed_and_once_per_event(instance, receiver):
    server = receiver(failures=2)
    configure(instance, **{"webhook-url": server.url, "webhook-secret": SECRET})
    ok = instance.enqueue("echo fine")
    bad = instance.enqueue("exit 3", max_retries=1)
    pool = instance.start_pool(2)
    wait_until(lambda: len(server.delivered()) == 3, 60, message="three events delivered")
    events = {(e["job"]["id"], e["type"]): e for e in server.delivered()}
    assert set(events) == {(ok, "job.completed"), (bad, "job.retry"), (bad, "job.dead")}
    assert events[(bad, "job.dead")]["attempt"]["exit_code"] == 3
    assert events[(bad, "job.dead")]["job"]["state"] == "dead"
    assert "env" not in events[(ok, "job.completed")]["job"]
    for request in server.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
        assert request["headers"]["X-Queuectl-Signature"] == expected
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["headers"]["X-Queuectl-Event"] == json.loads(request["body"])["type"]
    by_delivery = {}
    for request in server.requests:            # each event: two 500s, then one 200, same body each time
        by_delivery.setdefault(request["delivery"], []).append(request)
    assert sorted(len(v) for v in by_delivery.values()) == [3, 3, 3]
    assert all(len({r["body"] for r in v}) == 1 for v in by_delivery.values())
    wait_until(lambda: instance.cli_json("notify", "list") == [], 60, message="an empty outbox")
    os.killpg(pool.pid, signal.SIGTERM)
    _, err = pool.communicate(timeout=60)
    assert "webhook answered 500" in err and "retry 1 of 5" in err


def test_a_stalled_webhook_never_delays_the_next_job(instance, receiver):
    server = receiver()
    server.release.clear()                      # every request hangs until released
    configure(instance, **{"webhook-url": server.url, "webhook-timeout": 120})
    first = instance.enqueue("true")
    instance.start_pool(1)
    wait_until(lambda: server.requests, 60, message="the first event to reach the server")
    later = [instance.enqueue(f"echo {n}") for n in range(3)]
    for job_id in later:                        # one worker, its webhook still hanging: jobs go on
        assert instance.wait_for_state(job_id, "completed")["state"] == "completed"
    assert len(server.requests) == 1
    server.release.set()
    wait_until(lambda: {e["job"]["id"] for e in server.delivered()} == {first, *later}, 60,
               message="every event delivered after the release")


def test_delivery_survives_the_death_of_the_whole_pool(instance, receiver):
    server = receiver()
    server.release.clear()
    configure(instance, **{"webhook-url": server.url, "webhook-timeout": 120, "webhook-events": ["dead"]})
    job = instance.enqueue("exit 1", max_retries=0)
    done = instance.enqueue("true")             # completed: not in webhook-events, never sent
    pool = instance.start_pool(1)
    wait_until(lambda: server.requests, 60, message="the dead event to reach the server")
    # The worker goes on to the next job while the event is delivered; the server holds the request
    # until released, so waiting here for that job still kills the pool mid-delivery (waiting after
    # the kill could find the job killed with its worker, on a machine where delivery came first).
    assert instance.wait_for_state(done, "completed")
    os.killpg(pool.pid, signal.SIGKILL)         # mid-delivery: worker, sources process and pool die
    pool.wait()
    assert instance.job(done)["state"] == "completed"
    pending = instance.cli_json("notify", "list")
    assert [(d["event"], d["job"], d["state"]) for d in pending] == [("job.dead", job, "pending")]
    server.release.set()
    instance.start_pool(1)
    wait_until(lambda: len(server.requests) == 2, 60, message="redelivery by the next pool")
    assert [e["job"]["id"] for e in server.delivered()] == [job, job]     # the first answer reached no one
    assert {r["delivery"] for r in server.requests} == {pending[0]["delivery"]}
    wait_until(lambda: instance.cli_json("notify", "list") == [], 60, message="an empty outbox")


def test_a_webhook_that_keeps_failing_is_given_up_and_sent_by_hand(instance, receiver):
    server = receiver(failures=1000)
    configure(instance, **{"webhook-url": server.url, "notify-retries": 2})
    job = instance.enqueue("true")
    instance.start_pool(1)
    wait_until(lambda: [d["state"] for d in instance.cli_json("notify", "list")] == ["failed"], 60,
               message="the delivery to be given up")
    assert len(server.requests) == 3
    [failed] = instance.cli_json("notify", "list")
    assert failed["tries"] == 3 and "500" in failed["last_error"] and failed["job"] == job
    server.failures = 0
    instance.cleanup()                          # the pool held the outbox; `notify send` takes it over
    sent = instance.run("notify", "send", "--failed")
    assert "1 sent, 0 failed" in sent.stderr
    assert [e["job"]["id"] for e in server.delivered()] == [job]
    assert instance.cli_json("notify", "list") == []


def test_callbacks_get_job_fields_and_never_fail_the_job(instance, tmp_path):
    record = ('env | grep ^QUEUECTL_ | sort > "$QUEUECTL_EVENT-$QUEUECTL_JOB_ID.env"; '
              'grep ^SigIgn: /proc/self/status > "$QUEUECTL_EVENT-$QUEUECTL_JOB_ID.sig"')
    # The one limit cuts "sleep 60" short and must leave the two quick callbacks alone: in proportion to
    # this machine's speed (a fixed 0.5 s could kill a callback that a loaded machine started slowly),
    # 3 to 10 s (a `status` that waited out a PostgreSQL restart measured 26 s: the waits below hold 10).
    instance.checked_cli("init")
    limit = min(10.0, round(startup_slack(instance), 1))
    configure(instance, **{"on-complete": record, "on-retry": record + "; exit 7",
                           "on-dead": "sleep 60", "callback-timeout": limit, "max-retries": 1})
    ok = instance.enqueue("true", queue="batch")
    bad = instance.enqueue("exit 4")
    pool = instance.start_pool(2)
    instance.wait_for_state(ok, "completed")
    assert instance.wait_for_state(bad, "dead")["exit_code"] == 4
    completed = wait_until(lambda: _read_env(instance.root / f"completed-{ok}.env"), 30, message="on-complete")
    assert completed["QUEUECTL_JOB_ID"] == ok and completed["QUEUECTL_JOB_STATE"] == "completed"
    assert completed["QUEUECTL_EXIT_CODE"] == "0" and completed["QUEUECTL_ATTEMPT"] == "1"
    assert completed["QUEUECTL_QUEUE"] == "batch" and completed["QUEUECTL_COMMAND"] == "true"
    # a callback starts with SIGINT and SIGHUP at their defaults, like a job (the pool handles them)
    sig = instance.root / f"completed-{ok}.sig"
    line = wait_until(lambda: sig.exists() and sig.read_text().strip(), 30, message="the callback's signal mask")
    ignored = int(line.split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGHUP - 1)), hex(ignored)
    retry = wait_until(lambda: _read_env(instance.root / f"retry-{bad}.env"), 30, message="on-retry")
    assert retry["QUEUECTL_JOB_STATE"] == "failed" and retry["QUEUECTL_EXIT_CODE"] == "4"
    wait_until(lambda: {d["event"] for d in instance.cli_json("notify", "list")} == {"job.retry", "job.dead"}, 30,
               message="both failing callbacks recorded as failed deliveries")
    os.killpg(pool.pid, signal.SIGTERM)
    _, err = pool.communicate(timeout=60)
    assert "on-retry callback exited 7" in err
    assert f"on-dead callback ran longer than {limit:g}s; killed" in err
    assert instance.job(ok)["state"] == "completed" and instance.job(bad)["state"] == "dead"


def _read_env(path):
    if not path.exists():
        return None
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_bad_notify_settings_are_one_line_errors(instance):
    bad = instance.run("config", "set", "webhook-url", "ftp://example.com", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("queuectl: error:") and len(bad.stderr.splitlines()) == 1
    bad = instance.run("config", "set", "webhook-events", "completed,exploded", check=False)
    assert bad.returncode == 2 and "unknown event 'exploded'" in bad.stderr


def test_a_killed_delivery_process_is_started_again_and_resends(instance, receiver):
    server = receiver()
    server.release.clear()
    configure(instance, **{"webhook-url": server.url, "webhook-timeout": 120})
    job = instance.enqueue("true")
    pool = instance.start_pool(1)
    wait_until(lambda: server.requests, 60, message="the event to reach the server")
    [sender] = _sources_processes(instance, pool)
    os.kill(sender, signal.SIGKILL)             # the sources process dies mid-delivery; the pool lives
    server.release.set()
    wait_until(lambda: len(server.requests) == 2, 60, message="redelivery by a new sources process")
    assert [e["job"]["id"] for e in server.delivered()] == [job, job]
    assert len({r["delivery"] for r in server.requests}) == 1
    wait_until(lambda: instance.cli_json("notify", "list") == [], 60, message="an empty outbox")
    assert len(_sources_processes(instance, pool)) == 1
    assert len(_children(pool.pid)) == 2        # one worker and the new sources process, not two workers


def _sources_processes(instance, pool):
    """Children of the pool that are not workers."""
    workers = {w["pid"] for w in instance.cli_json("status")["workers"]}
    return [pid for pid in _children(pool.pid) if pid not in workers]


def _children(pid):
    """The pool's children but the workers' watchdogs: the pool is a subreaper, so a watchdog (detached by
    a double fork, the leader of a process group of its own) is adopted by it."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        pids = [int(p) for p in fh.read().split()]
    return [p for p in pids if _group_of(p) != p]


def _group_of(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_damaged_outbox_file_is_set_aside_and_the_rest_delivered(instance, receiver):
    server = receiver()
    configure(instance, **{"webhook-url": server.url})
    outbox = instance.root / ".queue.db.notify"
    if instance.config["db"] != "queue.db":
        outbox = instance.root / "outbox"
        configure(instance, **{"webhook-url": server.url, "notify-outbox": str(outbox)})
    job = instance.enqueue("true")
    instance.run("worker", "start", "--burst")      # the last pass on the way out sends the event
    assert [e["job"]["id"] for e in server.delivered()] == [job]
    (outbox / "00000000000000000001-evt_x.webhook.json").write_text("{not json")
    sent = instance.run("notify", "send")
    assert "0 sent, 0 failed" in sent.stderr and "is not a readable delivery" in sent.stderr
    assert (outbox / "failed" / "00000000000000000001-evt_x.webhook.json").exists()
    assert instance.cli_json("notify", "list") == []


def test_the_webhook_secret_is_hidden_from_config_list_and_set(instance):
    instance.run("init")
    assert instance.run("config", "set", "webhook-secret", "s3cr3t-key").stdout == "webhook-secret = (hidden)\n"
    rows = {r["key"]: r for r in instance.json("config", "list")}
    assert rows["webhook-secret"]["value"] == "(hidden)" and rows["webhook-secret"]["source"] == "store"
    assert "s3cr3t-key" not in instance.run("config", "list").stdout
    assert instance.run("config", "get", "webhook-secret").stdout == "s3cr3t-key\n"    # asked for by name
    assert instance.run("config", "set", "max-retries", "5").stdout == "max-retries = 5\n"


class Endpoint:
    """A raw TCP endpoint on 127.0.0.1 that reads each request and then misbehaves: ``redirect``
    answers 302 to another path (and records any request that follows it), ``silent`` never
    answers, ``trickle`` sends its status line one byte every 0.1 s, forever."""

    def __init__(self, mode: str):
        import socket

        self.mode, self.requests, self.stopping = mode, [], threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        try:
            self.misbehave(conn)
        except OSError:                    # the client gave up on us: what is being tested
            pass

    def misbehave(self, conn):
        with conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data.split(b" ", 2)[:2])
            if self.mode == "redirect":
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n")
            elif self.mode == "trickle":
                for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
                    if self.stopping.wait(0.1):
                        return
                    conn.sendall(bytes([byte]))
            else:
                self.stopping.wait(60)

    def close(self):
        self.stopping.set()
        self.sock.close()


@pytest.mark.parametrize("mode", ["redirect", "silent", "trickle"])
def test_a_webhook_that_redirects_never_answers_or_trickles_fails_cleanly_in_bounded_time(instance, mode):
    endpoint = Endpoint(mode)
    try:
        # The bound is under test where no answer comes; a redirect is answered at once, and a short bound
        # there could expire first on a loaded machine (the error would then be the timeout, not the 302).
        configure(instance, **{"webhook-url": endpoint.url, "webhook-timeout": 30 if mode == "redirect" else 0.5,
                               "notify-retries": 1})
        jobs = [instance.enqueue(f"echo {n}") for n in range(2)]
        pool = instance.start_pool(1)
        wait_until(lambda: [d["state"] for d in instance.cli_json("notify", "list")] == ["failed", "failed"], 60,
                   message="both deliveries to be given up")
        assert all(instance.job(j)["state"] == "completed" for j in jobs)
        errors = {d["last_error"] for d in instance.cli_json("notify", "list")}
        if mode == "redirect":
            assert errors == {"webhook answered 302 Found to http://127.0.0.1:1/elsewhere; redirects are not "
                              "followed (set webhook-url to where it points)"}
        else:          # a per-read timeout would never fire on the trickle: the whole exchange is bounded
            assert errors == {"webhook failed: no whole answer within 0.5s"}
        assert [method for method, _ in endpoint.requests] == [b"POST"] * 4      # two tries each, never a GET
        os.killpg(pool.pid, signal.SIGTERM)
        _, err = pool.communicate(timeout=60)
        assert "Traceback" not in err and err.count("gave up after 2 tries") == 2
    finally:
        endpoint.close()


HANGING = '''
import threading
from queuectl import hookimpl

def hang(event, queue):
    threading.Event().wait()          # never returns

def picky(event, queue):
    raise ZeroDivisionError("picky cannot decide")

@hookimpl
def queuectl_register_notifiers(register):
    register("stuck", hang)
    register("picky", lambda event, queue: None, wants=picky)
'''


def test_a_notifier_that_hangs_is_abandoned_and_the_other_channels_go_on(instance, receiver):
    server = receiver()
    (instance.plugins / "hang.py").write_text(HANGING)
    (instance.plugins / "hang.py").chmod(0o644)
    configure(instance, **{"webhook-url": server.url, "notify-timeout": 0.5})
    jobs = [instance.enqueue(f"echo {n}") for n in range(3)]
    pool = instance.start_pool(1)
    wait_until(lambda: {e["job"]["id"] for e in server.delivered()} == set(jobs), 60,
               message="every webhook delivered while the stuck notifier hangs")
    stuck = wait_until(lambda: (lambda rows: rows if len(rows) == 3 and any(r["tries"] for r in rows) else None)(
        [d for d in instance.json("notify", "list") if d["channel"] == "stuck"]), 30, message="stuck's deliveries")
    assert sorted(r["tries"] for r in stuck) == [0, 0, 1]     # abandoned once, then not called while it hangs
    os.killpg(pool.pid, signal.SIGTERM)
    _, err = pool.communicate(timeout=60)
    assert "notifier stuck (plugin hang) did not return within 0.5s; abandoned, and not used again until it returns" in err
    assert "notifier picky (plugin hang) failed in wants: ZeroDivisionError: picky cannot decide; the completed " \
           "event is not sent to it" in err
    assert "Traceback" not in err
    assert all(instance.job(j)["state"] == "completed" for j in jobs)


def test_a_callback_that_floods_output_reads_stdin_and_leaves_a_child_is_bounded(instance):
    callback = ('cat; head -c 5000000 /dev/zero | tr "\\0" x; (sleep 300; touch survived) & echo $! > child.pid; '
                'echo done > callback.done')
    configure(instance, **{"on-complete": callback, "callback-timeout": 60})
    job = instance.enqueue("true")
    log = instance.root / "pool.log"           # a file: a pipe read only at the end would fill and block the pool
    with open(log, "w") as fh:
        pool = instance.start_pool(1, stderr=fh)
    wait_until(lambda: (instance.root / "callback.done").exists(), 60, message="the callback to finish")
    child = int(wait_until(lambda: (instance.root / "child.pid").read_text().strip(), 60, message="its child's pid"))
    wait_until(lambda: not os.path.exists(f"/proc/{child}") or
               open(f"/proc/{child}/stat").read().split(") ")[1][0] == "Z", 30, message="its child to be killed")
    wait_until(lambda: instance.cli_json("notify", "list") == [], 30, message="the delivery to be done")
    os.killpg(pool.pid, signal.SIGTERM)
    pool.communicate(timeout=60)
    err = log.read_text()
    assert err.count("x") <= 65536 + 100 and "x" * 65536 in err
    assert f"on-complete callback printed {5000000 - 65536} bytes more than the 65536 shown; dropped" in err
    assert not (instance.root / "survived").exists() and instance.job(job)["state"] == "completed"


def test_callback_variables_carry_newlines_and_unicode_exactly(instance):
    dump = ('printf %s "$QUEUECTL_COMMAND" > command.txt; printf %s "$QUEUECTL_LABELS" > labels.txt; '
            'printf %s "$QUEUECTL_ERROR" > error.txt')
    configure(instance, **{"on-dead": dump})
    command = "echo 'Grüße, 世界 🚀'\nexit 9"
    job = instance.run("enqueue", "--command", command, "--max-retries", "0", "--label", "owner=Zoë").stdout.strip()
    pool = instance.start_pool(1)
    wait_until(lambda: (instance.root / "error.txt").exists(), 60, message="the on-dead callback")
    wait_until(lambda: instance.cli_json("notify", "list") == [], 30, message="the delivery to be done")
    os.killpg(pool.pid, signal.SIGTERM)
    pool.communicate(timeout=60)
    assert (instance.root / "command.txt").read_text() == command
    assert (instance.root / "labels.txt").read_text() == "owner=Zoë"
    assert (instance.root / "error.txt").read_text() == instance.job(job)["history"][0]["error"]
