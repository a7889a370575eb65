"""The plugin contract of queuectl.

Every hook is called with keyword arguments, so an implementation may accept fewer
arguments than its spec. Built-in plugins (``queuectl/builtin``) implement these hooks
through the same public :data:`queuectl.hookimpl` as any third-party plugin.

Each hook is documented in ``docs/hooks.md`` under a heading that repeats its exact
signature; ``tests/test_docs.py`` fails when the two disagree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from .models import Attempt, Job, RetryDecision
    from .queue import Queue

PROJECT = "queuectl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "hookspec", "hookimpl",
    "queuectl_register_storage", "queuectl_register_executors", "queuectl_register_settings",
    "queuectl_register_job_fields", "queuectl_register_commands", "queuectl_register_notifiers",
    "queuectl_validate_job", "queuectl_job_sources", "queuectl_worker_options", "queuectl_parse_job_file",
    "queuectl_status_info",
    "queuectl_retry_decision",
    "queuectl_attempt_started", "queuectl_attempt_finished", "queuectl_job_dead",
]


# --- registration -----------------------------------------------------------------


@hookspec
def queuectl_register_storage(register: Callable[..., None]) -> None:
    """Register storage backends by name.

    :param register: call ``register(name, factory, schemes=())``. ``factory(url, queue)``
        returns an object with the verbs of :class:`queuectl.store.Store`. ``schemes`` are
        the URL schemes (``postgresql``) that select this backend when the ``db`` setting
        is a URL; a plain path selects the backend named by the ``storage`` setting.
    """


@hookspec
def queuectl_register_executors(register: Callable[..., None]) -> None:
    """Register executors by name; a job picks one with its ``executor`` field.

    :param register: call ``register(name, executor)``; ``executor`` has the methods of
        :class:`queuectl.executor.Executor`.
    """


@hookspec
def queuectl_register_settings(register: Callable[..., None]) -> None:
    """Declare configuration keys that a plugin reads.

    :param register: call ``register(Setting(...))`` with a :class:`queuectl.config.Setting`.
    """


@hookspec
def queuectl_register_job_fields(register: Callable[..., None]) -> None:
    """Declare extra job fields a plugin understands, so that the validator accepts them.

    :param register: call ``register(name, check=None, help="")``; ``check(value)`` returns
        the normalised value or raises ``ValueError`` with a message for the user.
    """


@hookspec
def queuectl_register_commands(cli: "click.Group") -> None:
    """Add subcommands to the ``queuectl`` command line.

    :param cli: the top-level click group; call ``cli.add_command(...)`` or use ``@cli.command()``.
    """


@hookspec
def queuectl_register_notifiers(register: Callable[..., None]) -> None:
    """Register notifiers: channels told when a job completes, is retried or dies.

    The built-in ``notify`` plugin delivers every event from its outbox, in the pool's job
    source process and never in a worker, retrying a failed delivery with backoff.

    :param register: call ``register(name, deliver, wants=None, retry=True)``.
        ``deliver(event, queue)`` sends one event (a dict: the webhook body) and raises to fail;
        ``wants(event_name, queue)`` says whether ``completed``/``retry``/``dead`` is for it
        (default: every event); ``retry=False`` gives up after one failed delivery.
    """


# --- ingestion -----------------------------------------------------------------------


@hookspec
def queuectl_validate_job(job: dict[str, Any], queue: "Queue") -> None:
    """Check, and optionally normalise in place, a job before it is stored.

    Called for every job however it arrives (command-line flags, JSON, Python, a source
    such as the spool folder), before defaults are filled in.

    :param job: the fields given by the user, as a dict; change it in place to normalise.
    :param queue: the queue the job is going into.
    :raises queuectl.JobValidationError: to refuse the job; nothing of the batch is stored.
    """


@hookspec
def queuectl_job_sources(queue: "Queue", options: dict[str, Any]) -> Optional[list]:
    """Return sources that feed jobs into the queue while a worker pool runs.

    :param queue: the queue the sources enqueue into.
    :param options: options given to ``worker start`` (plugins read only their own).
    :return: a list of objects with ``start()`` and ``stop()``, or None.
    """


@hookspec
def queuectl_worker_options() -> Optional[list]:
    """Add options to ``queuectl worker start`` (for example a source's folder).

    :return: a list of ``click.Option``; their values reach :func:`queuectl_job_sources` in ``options``.
    """


@hookspec(firstresult=True)
def queuectl_parse_job_file(path: str, data: bytes, queue: "Queue") -> Optional[list]:
    """Turn the bytes of a dropped job file into job specs (the spool folder's format hook).

    The first implementation that returns something other than None decides, so a plugin
    can add a format by file extension.

    :param path: the file's original name (use its extension to decide).
    :param data: the file's content.
    :param queue: the queue.
    :return: a list of job spec dicts, or None when the format is not this plugin's.
    :raises ValueError: the file is this plugin's format but invalid; the message says where.
    """


@hookspec
def queuectl_status_info(queue: "Queue") -> Optional[dict]:
    """Contribute a section to ``queuectl status``.

    :param queue: the queue.
    :return: ``{"section name": {key: value, ...}}``, or None.
    """


# --- retry policy --------------------------------------------------------------------


@hookspec(firstresult=True)
def queuectl_retry_decision(job: "Job", attempt: "Attempt", queue: "Queue") -> Optional["RetryDecision"]:
    """Decide what happens after a failed attempt: retry after a delay, or give up.

    The first implementation that returns something other than None decides.

    :param job: the job, with ``tries`` counting the attempts against its budget.
    :param attempt: the attempt that just failed.
    :param queue: the queue, for settings (``queue.config``).
    :return: a :class:`queuectl.models.RetryDecision`, or None for no opinion.
    """


# --- post-run reporting (exceptions are logged, never fail a job) --------------------


@hookspec
def queuectl_attempt_started(job: "Job", attempt: int, queue: "Queue") -> None:
    """An attempt of ``job`` is about to start.

    :param job: the claimed job (state ``processing``).
    :param attempt: the attempt number, from 1.
    :param queue: the queue.
    """


@hookspec
def queuectl_attempt_finished(job: "Job", attempt: "Attempt", queue: "Queue") -> None:
    """An attempt was recorded; ``job`` shows the state it moved to.

    :param job: the job after the attempt (``completed``, ``failed`` or ``dead``).
    :param attempt: the recorded attempt with output, exit code and duration.
    :param queue: the queue.
    """


@hookspec
def queuectl_job_dead(job: "Job", attempt: "Attempt", queue: "Queue") -> None:
    """A job has spent its retries and moved to the dead letter queue.

    :param job: the dead job.
    :param attempt: its last attempt.
    :param queue: the queue.
    """
