"""The built-in job validator: one ingestion hook that every way of enqueueing goes through."""
from __future__ import annotations

import os
import re

from queuectl import hookimpl
from queuectl.errors import JobValidationError
from queuectl.models import INPUT_FIELDS, PROTECTED_FIELDS, QUEUE_PATTERN, parse_duration, parse_time

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
PRIORITY_RANGE = (-100, 100)


def _integer(name: str, value, low=None, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise JobValidationError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise JobValidationError(f"{name} must be {bounds}, got {value}")
    return value


def _check_command(job: dict) -> None:
    command = job.get("command")
    if command is None:
        raise JobValidationError("a job needs a command")
    if not isinstance(command, str):
        raise JobValidationError(f"command must be a string, got {type(command).__name__}")
    if not command.strip():
        raise JobValidationError("command is empty")
    if "\0" in command:
        raise JobValidationError("command contains a NUL byte")


LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
LABEL_VALUE_MAX = 256


def _check_labels(value) -> dict:
    """KEY=VALUE tags: short keys, single-line values."""
    if not isinstance(value, dict):
        raise JobValidationError("labels must be a mapping of names to values")
    labels = {}
    for key, val in value.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise JobValidationError(f"label name {key!r} is not valid: use 1-64 letters, digits and ._/- "
                                     f"starting with a letter or digit")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise JobValidationError(f"label {key} must be a string, got {val!r}")
        val = str(val)
        if len(val) > LABEL_VALUE_MAX or any(ord(c) < 32 or ord(c) == 127 for c in val):
            raise JobValidationError(f"label {key} must be one line of at most {LABEL_VALUE_MAX} characters")
        labels[key] = val
    return labels


def _check_argv(job: dict) -> None:
    """An argv job runs without a shell; its command is the shell-quoted argv, for display and search."""
    argv = job.get("argv")
    if argv is None:
        return
    if job.get("command") is not None:
        raise JobValidationError("give either command (run by the shell) or argv (run without one), not both")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise JobValidationError("argv must be a non-empty list of strings")
    if not argv[0] or any("\0" in a for a in argv):
        raise JobValidationError("argv needs a program name and no NUL bytes")
    import shlex

    job["command"] = shlex.join(argv)


def _check_env(value) -> dict:
    if not isinstance(value, dict):
        raise JobValidationError("env must be a mapping of variable names to values")
    env = {}
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise JobValidationError(f"env has an invalid variable name {key!r}")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise JobValidationError(f"env value of {key} must be a string, got {val!r}")
        env[key] = str(val)
    return env


def _check_cwd(value) -> str:
    if not isinstance(value, str) or not value:
        raise JobValidationError("cwd must be a folder path")
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isdir(path):
        raise JobValidationError(f"cwd {value!r} is not an existing folder")
    return path


def _check_schedule(job: dict) -> None:
    """delay and run_at become one run_at in epoch seconds; after becomes a list of ids."""
    if job.get("delay") is not None and job.get("run_at") is not None:
        raise JobValidationError("give either delay or run_at, not both")
    try:
        if job.get("delay") is not None:
            job["delay"] = parse_duration(job["delay"])
        if job.get("run_at") is not None and not isinstance(job["run_at"], float):
            job["run_at"] = parse_time(job["run_at"])
    except ValueError as exc:
        raise JobValidationError(str(exc)) from None
    after = job.get("after")
    if after is not None:
        if isinstance(after, str):
            after = [a.strip() for a in after.split(",") if a.strip()]
        if not isinstance(after, list) or not all(isinstance(a, str) and a for a in after):
            raise JobValidationError("after must be a list of job ids (or one comma-separated string)")
        if job.get("id") is not None and job["id"] in after:
            raise JobValidationError(f"job {job['id']!r} cannot depend on itself")
        job["after"] = list(dict.fromkeys(after))


@hookimpl(tryfirst=True)
def queuectl_validate_job(job, queue):
    for field in PROTECTED_FIELDS:
        if field in job:
            raise JobValidationError(f"field {field!r} is set by queuectl and cannot be given")
    known = set(INPUT_FIELDS) | set(queue.job_fields)
    unknown = sorted(str(k) for k in job if k not in known)
    if unknown:
        raise JobValidationError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    _check_argv(job)
    _check_command(job)
    if job.get("labels") is not None:
        job["labels"] = _check_labels(job["labels"])
    if job.get("id") is not None:
        if not isinstance(job["id"], str) or not ID_PATTERN.match(job["id"]):
            raise JobValidationError(f"id {job['id']!r} is not valid: use 1-128 letters, digits and ._:@+- "
                                     f"starting with a letter or digit")
    if job.get("max_retries") is not None:
        job["max_retries"] = _integer("max_retries", job["max_retries"], 0)
    if job.get("timeout") is not None:
        timeout = job["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise JobValidationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if job.get("priority") is not None:
        job["priority"] = _integer("priority", job["priority"], *PRIORITY_RANGE)
    if job.get("queue") is not None and (not isinstance(job["queue"], str) or not QUEUE_PATTERN.match(job["queue"])):
        raise JobValidationError(f"queue name {job['queue']!r} is not valid")
    if job.get("env") is not None:
        job["env"] = _check_env(job["env"])
    if job.get("cwd") is not None:
        job["cwd"] = _check_cwd(job["cwd"])
    _check_schedule(job)
    if job.get("unique_key") is not None and (not isinstance(job["unique_key"], str) or not job["unique_key"]):
        raise JobValidationError("unique_key must be a non-empty string")
    if job.get("executor") is not None and job["executor"] not in queue.executors:
        raise JobValidationError(f"unknown executor {job['executor']!r} "
                                 f"(registered: {', '.join(sorted(queue.executors)) or 'none'})")
    for name, (check, _options, plugin) in queue.job_fields.items():
        if name in job and check is not None:
            try:
                job[name] = check(job[name])
            except ValueError as exc:
                raise JobValidationError(f"{name}: {exc}") from None
