"""The built-in notify plugin: shell callbacks and webhooks when a job completes, retries or dies.

A worker never delivers anything itself. When an attempt is recorded, the worker writes one small
file per delivery into the outbox folder and sends a wake-up datagram; a thread in the pool's job
source process (a process of its own, so the pool stays single-threaded) delivers it, retries a
failure with backoff and deletes the file once done. So a slow or dead endpoint never delays a
worker's next job, and a delivery outlives the worker that wrote it and the process that was
sending it: it is sent at least once (``X-Queuectl-Delivery`` tells a repeat apart).

Channels are notifiers, registered through ``queuectl_register_notifiers``: this plugin registers
``webhook`` and ``callback``; a third-party plugin adds its own and gets the same outbox.
"""
from __future__ import annotations

import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

import click

from queuectl import hookimpl
from queuectl.config import Setting, choice_list, integer, location, seconds, text
from queuectl.errors import PluginError, QueueError
from queuectl.models import COMPLETED, DEAD, FAILED, MAX_INTERVAL, MAX_WAIT, iso, now, record
from queuectl.plugins import call_registrations, hook_failure
from queuectl._lazy import LazyImport
# The outbox and this plugin's status section live in notify_outbox, which is all `status` imports.
from queuectl.builtin.notify_outbox import CALLBACKS, Outbox, outbox_folder, queuectl_status_info  # noqa: F401

json = LazyImport("json", globals())

EVENTS = ("completed", "retry", "dead")
STATE_EVENTS = {COMPLETED: "completed", FAILED: "retry", DEAD: "dead"}
MAX_BACKOFF = 3600.0
TAIL = 2048            # bytes of the last attempt's stderr carried in an event
OWN_BOUND_SLACK = 5.0  # webhooks and callbacks stop themselves; the outer bound is only a safety net
CALLBACK_OUTPUT = 65536  # bytes of a callback's output passed to the pool's stderr; the rest is dropped


class DeliveryError(Exception):
    """A delivery failed; the message is logged (and the delivery retried if its notifier allows)."""


# --- settings --------------------------------------------------------------------------------


event_names = choice_list("event", *EVENTS)


def http_url(value: Any) -> str:
    from urllib.parse import urlsplit

    url = text(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048 or \
            any(c <= " " or c == "\x7f" or not c.isascii() and not c.isprintable() for c in url):
        raise ValueError(f"expected an http:// or https:// URL (no spaces or control characters), got {url[:80]!r}")
    parts.port        # ValueError for a port out of range
    return url


@hookimpl
def queuectl_register_settings(register):
    for event, key in CALLBACKS.items():
        register(Setting(key, None, text, f"Shell command run when a job {'is retried' if event == 'retry' else event.replace('dead', 'dies')}"
                         " (job fields in QUEUECTL_* variables)."))
    register(Setting("callback-timeout", 30.0, seconds(0.1, MAX_WAIT),
                     "Seconds a callback may run before it is killed."))
    register(Setting("webhook-url", None, http_url, "URL that receives a JSON POST for each job event."))
    register(Setting("webhook-events", list(EVENTS), event_names, "Events sent to webhook-url: completed, retry, dead."))
    register(Setting("webhook-secret", None, text, "Key of the X-Queuectl-Signature header (HMAC-SHA256 of the body).",
                     secret=True))
    register(Setting("webhook-timeout", 10.0, seconds(0.1, MAX_WAIT),
                     "Seconds to wait for a webhook's answer."))
    register(Setting("notify-retries", 5, integer(0, 1000),
                     "Retries of a failed delivery (webhooks, plugin notifiers)."))
    register(Setting("notify-timeout", 60.0, seconds(0.1, MAX_WAIT),
                     "Seconds one delivery of a plugin's notifier may take before it is abandoned and retried."))
    register(Setting("notify-backoff", 1.0, seconds(0.001, MAX_INTERVAL),
                     "Seconds before a delivery's first retry; doubles each time."))
    register(Setting("notify-outbox", None, location, "Folder of pending deliveries (default: beside the store).",
                     file_only=True, path=True))


# --- notifiers ---------------------------------------------------------------------------------


@record
class Notifier:
    """A registered notifier: its name, how it delivers an event, which events it wants, whether a
    failed delivery is retried, and the plugin that registered it."""

    name: str
    deliver: Callable[[dict, Any], Any]
    wants: Optional[Callable[[str, Any], bool]]
    retry: bool
    plugin: str
    timeout: Optional[Callable[[Any], float]] = None

    def __init__(self, name: str, deliver: Callable[[dict, Any], Any], wants: Optional[Callable[[str, Any], bool]],
                 retry: bool, plugin: str, timeout: Optional[Callable[[Any], float]] = None) -> None:
        self.name = name
        self.deliver = deliver
        self.wants = wants
        self.retry = retry
        self.plugin = plugin
        self.timeout = timeout

    def limit(self, queue) -> float:
        """Seconds one delivery may take: the notifier's own bound, else notify-timeout."""
        return self.timeout(queue) if self.timeout is not None else queue.config.get("notify-timeout")

    def wanted(self, event: str, queue) -> bool:
        """Is this event for this notifier? A ``wants`` that raises is logged: the event is not queued for it."""
        if self.wants is None:
            return True
        try:
            return bool(self.wants(event, queue))
        except Exception as exc:
            log(f"notifier {self.name} (plugin {self.plugin}) failed in wants: {type(exc).__name__}: {exc}; "
                f"the {event} event is not sent to it")
            return False


_NOTIFIERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def notifiers(queue) -> dict:
    """Every registered notifier by name, collected once per plugin manager."""
    found = _NOTIFIERS.get(queue.pm)
    if found is None:
        found = {}

        def make(plugin: str):
            def register(name: str, deliver, wants=None, retry: bool = True, timeout=None):
                if name in found:
                    raise PluginError(f"notifier {name!r} is registered twice (by {found[name].plugin} and {plugin})")
                if not callable(deliver) or wants is not None and not callable(wants):
                    raise PluginError(f"notifier {name!r}: deliver and wants must be functions")
                found[name] = Notifier(name, deliver, wants, retry, plugin, timeout)
            return register

        def skipped(plugin: str, exc: Exception) -> None:
            # One plugin's failure costs its own notifiers, not everyone's (logged once per process).
            for name in [n for n, notifier in found.items() if notifier.plugin == plugin]:
                del found[name]
            log(f"{hook_failure(plugin, 'queuectl_register_notifiers', exc)}; its notifiers are not used")
        call_registrations(queue.pm, "queuectl_register_notifiers", make, on_error=skipped)
        _NOTIFIERS[queue.pm] = found
    return found


@hookimpl
def queuectl_register_notifiers(register):
    register("webhook", post_webhook,
             wants=lambda event, queue: bool(queue.config.get("webhook-url")) and event in queue.config.get("webhook-events"),
             timeout=lambda queue: queue.config.get("webhook-timeout"))      # then cut short: cancel_webhook
    register("callback", run_callback, wants=lambda event, queue: bool(queue.config.get(CALLBACKS[event])), retry=False,
             timeout=lambda queue: queue.config.get("callback-timeout") + OWN_BOUND_SLACK)


def event_name(event: dict) -> str:
    return event["type"].split(".", 1)[1]


# --- webhooks --------------------------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """The X-Queuectl-Signature value: ``sha256=`` and the hex HMAC-SHA256 of the exact body."""
    import hashlib
    import hmac

    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(event: dict, queue) -> None:
    from queuectl import __version__

    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"queuectl/{__version__}",
               "X-Queuectl-Event": event["type"], "X-Queuectl-Delivery": event["id"]}
    secret = queue.config.get("webhook-secret")
    if secret:
        headers["X-Queuectl-Signature"] = signature(secret, body)
    status, reason, location = http_post(queue.config.get("webhook-url"), body, headers,
                                         queue.config.get("webhook-timeout"))
    if 300 <= status < 400:
        # Not followed: urllib would turn a 301/302/303 into a GET without the body and call it sent.
        raise DeliveryError(f"webhook answered {status} {reason} to {location or '?'}; redirects are not "
                            f"followed (set webhook-url to where it points)")
    if status >= 400 or status < 200:
        raise DeliveryError(f"webhook answered {status} {reason}")


_EXCHANGES: dict = {}       # thread id -> [the connection of the webhook it is sending, cut short?]


def http_post(url: str, body: bytes, headers: dict, timeout: float) -> tuple:
    """POST ``body``; (status, reason, Location). ``timeout`` bounds each step, and the deliverer's
    Watchdog cuts the whole exchange at ``webhook-timeout``, so an endpoint that trickles its answer a
    byte at a time cannot hold a delivery either."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=timeout)
    exchange = _EXCHANGES[threading.get_ident()] = [conn, False]
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        answer = conn.getresponse()
        answer.read(65536)
        return answer.status, answer.reason, answer.getheader("Location")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if exchange[1] or isinstance(exc, TimeoutError):
            raise DeliveryError(f"webhook failed: no whole answer within {timeout:g}s") from None
        raise DeliveryError(f"webhook failed: {exc or type(exc).__name__}") from None
    finally:
        _EXCHANGES.pop(threading.get_ident(), None)
        conn.close()


def cancel_webhook(ident: int) -> None:
    """Cut short the webhook that thread ``ident`` is sending: a blocked read returns at once."""
    exchange = _EXCHANGES.get(ident)
    if exchange is None:
        return
    exchange[1] = True
    sock = exchange[0].sock
    if sock is not None:
        try:
            sock.shutdown(2)                # SHUT_RDWR
        except OSError:
            pass


class Watchdog:
    """One thread that cuts short a webhook still running at its deadline. Arming it costs the deliverer
    no wait: the watchdog is woken only when it was idle, and otherwise finds the newer deadline when
    its current wait ends."""

    def __init__(self):
        import threading

        self.cond = threading.Condition()
        self.slot: Optional[tuple] = None          # (deadline, thread id) of the webhook being sent
        self.idle = False
        threading.Thread(target=self.run, name="queuectl-notify-watchdog", daemon=True).start()

    def run(self) -> None:
        with self.cond:
            while True:
                if self.slot is None:
                    self.idle = True
                    self.cond.wait()
                    self.idle = False
                    continue
                deadline, ident = self.slot
                left = deadline - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                self.slot = None
                cancel_webhook(ident)

    def watching(self, limit: float):
        import contextlib
        import threading

        @contextlib.contextmanager
        def watch():
            with self.cond:
                self.slot = (time.monotonic() + limit, threading.get_ident())
                if self.idle:
                    self.cond.notify()
            try:
                yield
            finally:
                with self.cond:
                    self.slot = None
        return watch()


# --- shell callbacks -------------------------------------------------------------------------------


def callback_env(event: dict) -> dict:
    """The job's fields as QUEUECTL_* variables, like task-spooler's TS_ONFINISH arguments."""
    job, attempt = event["job"], event["attempt"]
    labels = job.get("labels") or ""
    if isinstance(labels, dict):
        labels = ",".join(f"{k}={v}" for k, v in labels.items())
    elif isinstance(labels, (list, tuple)):
        labels = ",".join(map(str, labels))
    values = {"EVENT": event_name(event), "JOB_ID": job["id"], "JOB_STATE": job["state"], "COMMAND": job["command"],
              "QUEUE": job.get("queue"), "LABELS": labels, "ATTEMPT": attempt["attempt"],
              "OUTCOME": attempt["outcome"], "EXIT_CODE": attempt["exit_code"], "SIGNAL": attempt["signal"],
              "ERROR": attempt["error"], "DURATION": attempt["duration"]}
    return {f"QUEUECTL_{k}": "" if v is None else str(v) for k, v in values.items()}


def run_callback(event: dict, queue) -> None:
    """Run the event's shell callback in a session of its own, stdin from /dev/null. Its output goes
    to the pool's stderr up to CALLBACK_OUTPUT bytes (the rest is counted, not kept); it is killed
    (its whole group) after callback-timeout seconds, and whatever it left running in its group when
    it exits is killed then, so no callback outlives its delivery."""
    import subprocess

    key = CALLBACKS[event_name(event)]
    timeout = queue.config.get("callback-timeout")
    cwd = event["job"].get("cwd")
    env = {k: v for k, v in os.environ.items() if k not in ("QUEUECTL_JOB_ID", "QUEUECTL_ATTEMPT", "QUEUECTL_RUN_ID")}
    env.update(callback_env(event))
    proc = subprocess.Popen(["/bin/sh", "-c", queue.config.get(key)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=cwd if cwd and os.path.isdir(cwd) else None, env=env,
                            start_new_session=True)
    try:
        code, dropped = _supervise(proc, time.monotonic() + timeout)
    finally:
        _kill_group(proc.pid)
        proc.stdout.close()
        proc.wait()
    if dropped:
        log(f"{key} callback printed {dropped} bytes more than the {CALLBACK_OUTPUT} shown; dropped")
    if code is None:
        raise DeliveryError(f"{key} callback ran longer than {timeout:g}s; killed")
    if code:
        raise DeliveryError(f"{key} callback exited {code}")


def _supervise(proc, deadline: float) -> tuple:
    """Pass the callback's output on until it exits (then what its pipe still holds, briefly) or the
    deadline passes; (its exit code or None when it ran too long, bytes of output dropped)."""
    import select

    fd, shown, dropped, code = proc.stdout.fileno(), 0, 0, None
    drain_until, eof = None, False
    while True:
        now = time.monotonic()
        if code is None:
            code = proc.poll()
            if code is not None:
                drain_until = min(deadline, now + 0.2)   # a child of it may still hold the pipe open
        limit = deadline if drain_until is None else drain_until
        if eof and code is not None or now >= limit:
            return code, dropped
        if eof:                                          # it closed its output but runs on
            time.sleep(min(0.05, limit - now))
            continue
        ready, _, _ = select.select([fd], [], [], min(0.05, limit - now))
        if not ready:
            continue
        data = os.read(fd, 65536)
        eof = not data
        keep = data[:max(0, CALLBACK_OUTPUT - shown)]
        if keep:
            sys.stderr.flush()
            os.write(sys.stderr.fileno(), keep)
        shown += len(keep)
        dropped += len(data) - len(keep)


def _kill_group(pgid: int) -> None:
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


# --- events and the outbox ---------------------------------------------------------------------------


def build_event(job, attempt, name: str) -> dict:
    """The event as sent: the job without its env (it may hold secrets), the attempt without its output."""
    job_data = job.to_dict()
    job_data.pop("env", None)
    job_data.pop("worker", None)
    attempt_data = attempt.to_dict()
    for stream in ("stdout", "stderr"):
        attempt_data.pop(stream)
    attempt_data["stderr_tail"] = attempt.stderr[-TAIL:].decode("utf-8", "replace")
    return {"id": "evt_" + os.urandom(12).hex(), "type": f"job.{name}", "created_at": iso(now()),
            "job": job_data, "attempt": attempt_data}


@hookimpl
def queuectl_attempt_finished(job, attempt, queue):
    name = STATE_EVENTS.get(job.state)
    if name is None:
        return
    wanted = [n for n in notifiers(queue).values() if n.wanted(name, queue)]
    if not wanted:
        return
    event = build_event(job, attempt, name)
    box = Outbox(outbox_folder(queue))
    for notifier in wanted:
        box.put(notifier.name, event)
    box.wake()


# --- delivery ---------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"queuectl: notify: {message}", file=sys.stderr, flush=True)


class Deliverer:
    """Sends what the outbox holds. Only the holder of the folder's lock delivers, so two pools on
    one host never send the same file at once; the kernel drops the lock when its holder dies."""

    def __init__(self, queue, box: Outbox):
        self.queue = queue
        self.box = box
        self.lock_fd: Optional[int] = None
        self.not_before: dict = {}        # path -> when it is due again
        self.lanes: dict = {}             # channel -> the Lane (thread) that runs a plugin's deliveries
        self.watchdog: Optional[Watchdog] = None

    def lock(self, wait: bool = False) -> bool:
        import fcntl

        if self.lock_fd is None:
            self.box.ensure()
            fd = os.open(self.box.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError:
                os.close(fd)
                return False
            self.lock_fd = fd
        return True

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def deliver_due(self, everything: bool = False) -> tuple:
        """Deliver each due file once; return (sent, failed, seconds until the next one is due).

        When each waiting file is due again is remembered, so a long backlog behind a dead
        endpoint is not read again on every wake-up."""
        sent = failed = 0
        next_due = 1.0
        pending = self.box.pending()
        live = set(pending)
        self.not_before = {p: t for p, t in self.not_before.items() if p in live}
        for path in pending:
            wait = self.not_before.get(path, 0.0) - time.time()
            delivery = None if wait > 0 and not everything else self.box.read(path)
            if delivery is not None:
                wait = delivery.get("next_at", 0) - time.time()
            if delivery is not None and self.busy(delivery.get("channel")):
                wait = max(wait, 1.0)                  # not a try: asked again once the channel is free
            if wait > 0 and (not everything or delivery is not None and self.busy(delivery.get("channel"))):
                self.not_before[path] = time.time() + wait
                next_due = min(next_due, wait)
            elif delivery is None:
                self.set_aside(path)
            elif self.attempt(path, delivery):
                sent += 1
            else:
                failed += 1
                self.not_before[path] = delivery["next_at"]
                next_due = min(next_due, max(0.0, delivery["next_at"] - time.time()))
        return sent, failed, next_due

    def set_aside(self, path: Path) -> None:
        """A file that is not a delivery (damaged, or put there by hand) goes to failed/, once."""
        try:
            os.replace(path, self.box.failed / path.name)
        except FileNotFoundError:
            return                       # delivered meanwhile by `notify send`
        log(f"{path.name} is not a readable delivery; moved to {self.box.failed}")

    def attempt(self, path: Path, delivery: dict) -> bool:
        """One try of one delivery: done (file removed), rescheduled with backoff, or given up."""
        self.queue.config.refresh()
        limit = self.queue.config.get("notify-timeout")     # also reads the stored settings, here
        notifier = notifiers(self.queue).get(delivery.get("channel"))
        event = delivery["event"]
        try:
            if notifier is None:
                raise DeliveryError(f"no notifier named {delivery.get('channel')!r} is registered")
            limit = notifier.limit(self.queue)
            self.bounded(notifier, event, limit)
        except Exception as exc:
            self.failed(path, delivery, notifier, exc)
            return False
        path.unlink(missing_ok=True)
        return True

    def busy(self, channel: Optional[str]) -> bool:
        """Is an abandoned delivery of this channel still running? Its next ones wait for it to return."""
        lane = self.lanes.get(channel)
        if lane is None or not lane.stuck:
            return False
        if lane.returned():
            log(f"notifier {channel} returned; its deliveries resume")
            return False
        return True

    def bounded(self, notifier: Notifier, event: dict, limit: float) -> None:
        """``notifier.deliver(event, queue)`` for at most ``limit`` seconds. The built-in channels bound
        themselves (a callback is killed at its timeout, a webhook cut short by the watchdog) and run
        here; a plugin's runs in its channel's own thread, which can be given up on if it hangs. (A
        hand-off to another thread and back on every delivery made bursts of events wait: under load
        each wake-up of a thread can take a scheduler tick.)"""
        if notifier.plugin == "notify":
            if notifier.deliver is post_webhook:
                self.watchdog = self.watchdog or Watchdog()
                with self.watchdog.watching(limit):
                    notifier.deliver(event, self.queue)
            else:
                notifier.deliver(event, self.queue)
            return
        lane = self.lanes.get(notifier.name)
        if lane is None:
            lane = self.lanes[notifier.name] = Lane(notifier.name)
        lane.call(notifier, event, self.queue, limit)

    def failed(self, path: Path, delivery: dict, notifier: Optional[Notifier], exc: Exception) -> None:
        error = str(exc) if isinstance(exc, (DeliveryError, QueueError)) else f"{type(exc).__name__}: {exc}"
        delivery["tries"] = tries = delivery.get("tries", 0) + 1
        delivery["last_error"] = error
        what = f"{delivery.get('channel')} delivery of {event_label(delivery['event'])}"
        retries = self.queue.config.get("notify-retries") if notifier is not None and notifier.retry else 0
        if tries > retries:
            delivery["next_at"] = 0.0
            self.box.write(self.box.failed / path.name, delivery)
            path.unlink(missing_ok=True)
            log(f"{what} failed: {error}; gave up after {tries} tr{'y' if tries == 1 else 'ies'} "
                f"(kept in {self.box.failed})")
            return
        delay = min(MAX_BACKOFF, self.queue.config.get("notify-backoff") * 2 ** (tries - 1))
        delivery["next_at"] = time.time() + delay
        self.box.write(path, delivery)
        log(f"{what} failed: {error}; retry {tries} of {retries} in {delay:g}s")


class Lane:
    """The thread that runs one plugin channel's deliveries, one at a time, each for a bounded time. It
    lives as long as the deliverer (a thread per delivery cost as much as the HTTP request it made).
    Python cannot stop a thread: a delivery that outlasts its bound is given up on and the lane is
    ``stuck`` until it returns; the other channels go on."""

    def __init__(self, name: str):
        import queue as queue_module
        import threading

        self.requests: Any = queue_module.SimpleQueue()
        self.results: Any = queue_module.SimpleQueue()
        self.empty = queue_module.Empty
        self.stuck = False
        self.thread = threading.Thread(target=self.run, name=f"queuectl-notify-{name}", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            notifier, event, queue = self.requests.get()
            try:
                notifier.deliver(event, queue)
                self.results.put(None)
            except BaseException as exc:             # carried to the deliverer's thread
                self.results.put(exc)

    def call(self, notifier: Notifier, event: dict, queue, limit: float) -> None:
        self.requests.put((notifier, event, queue))
        try:
            outcome = self.results.get(timeout=limit)
        except self.empty:
            self.stuck = True
            outcome = DeliveryError(f"notifier {notifier.name} (plugin {notifier.plugin}) did not return within "
                                    f"{limit:g}s; abandoned, and not used again until it returns")
        if outcome is not None:
            raise outcome

    def returned(self) -> bool:
        """Has the stuck delivery returned? (Its outcome is dropped: that try was counted as failed.)"""
        try:
            self.results.get_nowait()
        except self.empty:
            return False
        self.stuck = False
        return True


def event_label(event: dict) -> str:
    return f"{event.get('type')} for job {event.get('job', {}).get('id')}"


class DeliverySource:
    """The job source (it enqueues nothing) that runs a Deliverer in a thread of the sources process."""

    def __init__(self, queue):
        import threading

        self.queue = queue.clone()        # its own store connection: a thread must not share one
        self.box = Outbox(outbox_folder(queue))
        self.stopping = threading.Event()
        self.stop_r, self.stop_w = os.pipe()
        self.thread = threading.Thread(target=self.run, name="queuectl-notify", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        os.write(self.stop_w, b"!")
        # bounded: what a delivery in flight may take; a file not done by then stays for the next pool
        self.thread.join(max(self.queue.config.get("webhook-timeout"), self.queue.config.get("callback-timeout"),
                             self.queue.config.get("notify-timeout")) + OWN_BOUND_SLACK + 1)

    def run(self) -> None:
        deliverer = Deliverer(self.queue, self.box)
        listener = None
        try:
            while not self.stopping.is_set():
                if not deliverer.lock():
                    self._sleep(None, 1.0)            # another pool on this host delivers
                    continue
                if listener is None:
                    listener = self._listen()
                self._sleep(listener, self._pass(deliverer))
            self._pass(deliverer)                      # what became due while stopping
        finally:
            deliverer.unlock()
            if listener is not None:
                listener.close()
            self.queue.close()

    def _pass(self, deliverer: Deliverer) -> float:
        """One pass over the outbox; seconds until the next. A failing pass (the store is down, the
        folder unreadable) is logged and tried again: the thread never gives up."""
        try:
            return deliverer.deliver_due()[2]
        except Exception as exc:
            log(f"delivery pass failed: {type(exc).__name__}: {exc}; trying again in 1 s")
            return 1.0

    def _listen(self):
        if not sys.platform.startswith("linux"):
            return None
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.box.address())
        except OSError:
            sock.close()
            return None
        return sock

    def _sleep(self, listener, seconds: float) -> None:
        import select
        import socket

        fds = [self.stop_r] + ([listener] if listener is not None else [])
        ready, _, _ = select.select(fds, [], [], max(0.0, seconds))
        if listener in ready:
            try:
                while listener.recv(64, socket.MSG_DONTWAIT):
                    pass
            except OSError:
                pass


@hookimpl
def queuectl_job_sources(queue, options):
    return [DeliverySource(queue)]


# --- commands and status ----------------------------------------------------------------------------


def delivery_rows(box: Outbox) -> list:
    rows = []
    for state, paths in (("pending", box.pending()), ("failed", box.given_up())):
        for path in paths:
            delivery = box.read(path)
            if delivery is None:
                continue
            event = delivery["event"]
            next_at = delivery.get("next_at") or None
            rows.append({"delivery": event.get("id"), "channel": delivery.get("channel"), "state": state,
                         "event": event.get("type"), "job": event.get("job", {}).get("id"),
                         "tries": delivery.get("tries", 0), "next_try": iso(next_at) if state == "pending" else None,
                         "last_error": delivery.get("last_error")})
    return rows


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import QueueError, emit_json, get_queue, short, table
    from queuectl.term import for_terminal

    @cli.group()
    def notify():
        """Notifications: deliveries waiting in the outbox, and sending them by hand.

        \b
        Examples:
          queuectl notify list
          queuectl notify send --failed
        """

    @notify.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON array of deliveries.")
    def notify_list(as_json):
        """Deliveries not sent yet (pending) and given up (failed), oldest first.

        \b
        Example:
          queuectl notify list --json
        """
        rows = delivery_rows(Outbox(outbox_folder(get_queue())))
        if as_json:
            emit_json(rows)
            return
        table(({**r, "last_error": for_terminal(short(r["last_error"], 50), sys.stdout, False)} for r in rows),
              ["delivery", "channel", "state", "event", "job", "tries", "next_try", "last_error"])

    @notify.command("send")
    @click.option("--failed", "include_failed", is_flag=True, help="Also retry deliveries that were given up.")
    def notify_send(include_failed):
        """Try every pending delivery now, once (for a pool that is not running, or from cron).

        \b
        Example:
          queuectl notify send --failed     # given-up deliveries too
        """
        queue = get_queue()
        box = Outbox(outbox_folder(queue))
        if include_failed:
            box.ensure()
            for path in box.given_up():
                delivery = box.read(path)
                if delivery is None:
                    continue
                delivery["tries"] = 0
                box.write(box.folder / path.name, delivery)
                path.unlink(missing_ok=True)
        deliverer = Deliverer(queue, box)
        if not deliverer.lock():
            raise QueueError(f"a worker pool on this host is delivering {box.folder}; it sends what is due")
        try:
            sent, failed, _ = deliverer.deliver_due(everything=True)
        finally:
            deliverer.unlock()
        click.echo(f"{sent} sent, {failed} failed", err=True)
        if failed:
            sys.exit(1)
