"""Post job events to Slack through an incoming webhook.

A notifier (``queuectl_register_notifiers``): the built-in notify plugin keeps each message in its
outbox, sends it from the pool's job source process (never from a worker) and retries a failure
with backoff (``notify-retries``, ``notify-backoff``). Settings: ``slack-webhook-url`` and
``slack-events`` (default: ``dead``). ``queuectl slack test`` posts one message to check the setup.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import click

from queuectl import QueueError, hookimpl
from queuectl.config import Setting, string_list, text

EMOJI = {"completed": ":white_check_mark:", "retry": ":repeat:", "dead": ":skull:"}


@hookimpl
def queuectl_register_settings(register):
    register(Setting("slack-webhook-url", None, text, "Slack incoming webhook that receives job events."))
    register(Setting("slack-events", ["dead"], string_list, "Events posted to Slack: completed, retry, dead."))


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
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(4096)
    except urllib.error.HTTPError as exc:
        raise QueueError(f"Slack answered {exc.code} {exc.reason}") from None
    except OSError as exc:                 # refused, unreachable, timed out
        raise QueueError(f"cannot reach Slack: {getattr(exc, 'reason', exc)}") from None


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
