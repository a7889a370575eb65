"""Post job events to Slack through an incoming webhook.

A notifier (``queuectl_register_notifiers``): the built-in notify plugin keeps each message in its
outbox, sends it from the pool's job source process (never from a worker) and retries a failure
with backoff (``notify-retries``, ``notify-backoff``), and gives up on a notifier that hangs
(``notify-timeout``). Settings: ``slack-webhook-url`` (a secret: Slack's URL is the credential, so
``config list`` hides it) and ``slack-events`` (default: ``dead``). ``queuectl slack test`` posts one
message to check the setup.

A redirect is not followed (urllib would turn it into a GET without the message and call it sent),
and ``webhook-timeout`` bounds the whole exchange, not each read.
"""
from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import click

from queuectl import QueueError, hookimpl
from queuectl.config import Setting, choice_list, text

EMOJI = {"completed": ":white_check_mark:", "retry": ":repeat:", "dead": ":skull:"}


def webhook_url(value: Any) -> str:
    url = text(value).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c <= " " or c == "\x7f" for c in url):
        raise ValueError("expected an http:// or https:// URL without spaces or control characters")
    parts.port                              # ValueError for a port out of range
    return url


@hookimpl
def queuectl_register_settings(register):
    register(Setting("slack-webhook-url", None, webhook_url, "Slack incoming webhook that receives job events.",
                     secret=True))
    register(Setting("slack-events", ["dead"], choice_list("event", *EMOJI), "Events posted to Slack: completed, retry, dead."))


@hookimpl
def queuectl_register_notifiers(register):
    register("slack", post_event,
             wants=lambda event, queue: bool(queue.config.get("slack-webhook-url"))
             and event in queue.config.get("slack-events"))


def message(event: dict) -> dict:
    """The Slack message for an event: one line, and the error (with the end of stderr) if any."""
    name = event["type"].split(".", 1)[1]
    job, attempt = event["job"], event["attempt"]
    line = f"{EMOJI[name]} job `{job['id']}` {name} after attempt {attempt['attempt']}: `{job['command'][:200]}`"
    if attempt.get("error"):
        line += f"\n> {attempt['error']}"
    tail = (attempt.get("stderr_tail") or "").strip()[-500:]
    if tail:
        line += f"\n```{tail}```"
    return {"text": line}


def post(url: str, payload: dict, timeout: float) -> None:
    """POST the message; a redirect or an error status is a failure (retried by the notify plugin).

    ``timeout`` bounds each step, and a timer cuts the connection when the whole exchange outlasts
    it, so an endpoint that trickles its answer a byte at a time cannot hold a delivery either."""
    import http.client
    import threading

    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=timeout)
    cut = threading.Event()
    held = []        # the socket: the connection lets go of it once an answer says it will close

    def cut_short():
        cut.set()
        sock = held[0] if held else conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)          # a blocked read returns at once
            except OSError:
                pass
    timer = threading.Timer(timeout, cut_short)
    timer.daemon = True
    timer.start()
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                     json.dumps(payload).encode(), {"Content-Type": "application/json"})
        held.append(conn.sock)
        answer = conn.getresponse()
        answer.read(65536)
        status, reason = answer.status, answer.reason
    except (OSError, http.client.HTTPException, ValueError) as exc:   # refused, unreachable, timed out
        if cut.is_set() or isinstance(exc, socket.timeout):
            raise QueueError(f"Slack gave no whole answer within {timeout:g}s") from None
        raise QueueError(f"cannot reach Slack: {exc or type(exc).__name__}") from None
    finally:
        timer.cancel()
        conn.close()
    if cut.is_set():
        raise QueueError(f"Slack gave no whole answer within {timeout:g}s")
    if 300 <= status < 400:
        raise QueueError(f"Slack answered {status} {reason} (redirects are not followed)")
    if not 200 <= status < 300:
        raise QueueError(f"Slack answered {status} {reason}")


def post_event(event: dict, queue) -> None:
    post(queue.config.get("slack-webhook-url"), message(event), queue.config.get("webhook-timeout"))


@hookimpl
def queuectl_register_commands(cli):
    from queuectl.command import UsageError, get_queue

    @cli.group()
    def slack():
        """Slack notifications."""

    @slack.command("test")
    def slack_test():
        """Post a test message to slack-webhook-url."""
        queue = get_queue()
        url = queue.config.get("slack-webhook-url")
        if not url:
            raise UsageError("slack-webhook-url is not set")
        post(url, {"text": "queuectl: test message"}, queue.config.get("webhook-timeout"))
        click.echo("posted")
