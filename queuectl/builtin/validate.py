"""The built-in job validator: one ingestion hook that every way of enqueueing goes through."""
from __future__ import annotations

import math
import os

from queuectl import hookimpl
from queuectl.errors import JobValidationError, PluginError
from queuectl._lazy import LazyPattern
from queuectl.models import (INPUT_FIELDS, MAX_ARG_BYTES, PROTECTED_FIELDS, QUEUE_PATTERN, RANGES, check_label_name,
                             comma_list, one_line, parse_duration, parse_time, plain_text)

ID_PATTERN = LazyPattern(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
# All of a job's variables together: a quarter of the exec limit (ARG_MAX), which the worker's own
# environment and the command share.
MAX_ENV_BYTES = min(1048576, (os.sysconf("SC_ARG_MAX") if hasattr(os, "sysconf") else 262144) // 4)
MAX_UNIQUE_KEY = 1024
_INPUT = frozenset(INPUT_FIELDS)
_PROTECTED = frozenset(PROTECTED_FIELDS)
_OPTIONAL = _INPUT - {"command", "argv"}      # the fields checked after the command, each only when given


def _in_range(name: str, value):
    try:
        return RANGES[name].check(value, name)
    except ValueError as exc:
        raise JobValidationError(str(exc)) from None


def check_text(name: str, value: str, limit: int = MAX_ARG_BYTES) -> str:
    """Text that can reach exec: no NUL byte, valid Unicode (no lone surrogate), at most ``limit`` bytes."""
    try:
        return plain_text(value, name, limit)
    except ValueError as exc:
        raise JobValidationError(str(exc)) from None


def _check_command(job: dict) -> None:
    command = job.get("command")
    if command is None:
        raise JobValidationError("a job needs a command")
    if not isinstance(command, str):
        raise JobValidationError(f"command must be a string, got {type(command).__name__}")
    if not command.strip():
        raise JobValidationError("command is empty")
    check_text("command", command)


LABEL_VALUE_MAX = 256


def _check_labels(value) -> dict:
    """KEY=VALUE tags: short keys, single-line values."""
    if not isinstance(value, dict):
        raise JobValidationError("labels must be a mapping of names to values")
    labels = {}
    for key, val in value.items():
        try:
            check_label_name(key)
        except ValueError as exc:
            raise JobValidationError(str(exc)) from None
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise JobValidationError(f"label {key} must be a string, got {val!r}")
        val = str(val)
        try:
            if len(val) > LABEL_VALUE_MAX:
                raise ValueError(f"label {key} must be at most {LABEL_VALUE_MAX} characters")
            labels[key] = one_line(val, f"label {key}")
        except ValueError as exc:
            raise JobValidationError(str(exc)) from None
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
    env, total = {}, 0
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise JobValidationError(f"env has an invalid variable name {key!r}")
        check_text("env variable name", key)
        if isinstance(val, bool) or not isinstance(val, (str, int, float)) or \
                (isinstance(val, float) and not math.isfinite(val)):
            raise JobValidationError(f"env value of {key} must be a string, got {val!r}")
        env[key] = check_text(f"env value of {key}", str(val))
        total += len(key) + len(env[key]) + 2
    if total > MAX_ENV_BYTES:
        raise JobValidationError(f"env is {total} bytes, more than the {MAX_ENV_BYTES} a job may set")
    return env


def _check_cwd(value) -> str:
    if not isinstance(value, str) or not value:
        raise JobValidationError("cwd must be a folder path")
    check_text("cwd", value, 4096)
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
        if isinstance(job.get("run_at"), (int, float)) and not isinstance(job["run_at"], bool):
            job["run_at"] = RANGES["run_at"].check(job["run_at"], "run_at")
        elif job.get("run_at") is not None:
            job["run_at"] = parse_time(job["run_at"])
    except ValueError as exc:
        raise JobValidationError(str(exc)) from None
    after = job.get("after")
    if after is not None:
        if isinstance(after, str):
            try:
                after = comma_list(after, "after")
            except ValueError as exc:
                raise JobValidationError(str(exc)) from None
        if not isinstance(after, list) or not all(isinstance(a, str) and ID_PATTERN.match(a) for a in after):
            raise JobValidationError("after must be a list of job ids (or one comma-separated string)")
        if job.get("id") is not None and job["id"] in after:
            raise JobValidationError(f"job {job['id']!r} cannot depend on itself")
        job["after"] = list(dict.fromkeys(after))


def _duration_or_number(name: str, value):
    """A range-checked number; a timeout may also be written as a duration such as "10m"."""
    if name == "timeout" and isinstance(value, str):
        try:
            value = parse_duration(value)
        except ValueError as exc:
            raise JobValidationError(f"timeout: {exc}") from None
    return _in_range(name, value)


def _check_given(job: dict, queue) -> None:
    """The checks of the fields after the command, in their order."""
    get = job.get
    if get("labels") is not None:
        job["labels"] = _check_labels(job["labels"])
    if get("id") is not None:
        if not isinstance(job["id"], str) or not ID_PATTERN.match(job["id"]):
            raise JobValidationError(f"id {job['id']!r} is not valid: use 1-128 letters, digits and ._:@+- "
                                     f"starting with a letter or digit")
    for name in ("max_retries", "timeout", "priority"):
        if get(name) is not None:
            job[name] = _duration_or_number(name, job[name])
    if get("queue") is not None and (not isinstance(job["queue"], str) or not QUEUE_PATTERN.match(job["queue"])):
        raise JobValidationError(f"queue name {job['queue']!r} is not valid")
    if get("env") is not None:
        job["env"] = _check_env(job["env"])
    if get("cwd") is not None:
        job["cwd"] = _check_cwd(job["cwd"])
    _check_schedule(job)
    if get("unique_key") is not None:
        if not isinstance(job["unique_key"], str) or not job["unique_key"]:
            raise JobValidationError("unique_key must be a non-empty string")
        check_text("unique_key", job["unique_key"], MAX_UNIQUE_KEY)
    if get("executor") is not None and (not isinstance(job["executor"], str) or
                                        job["executor"] not in queue.executors):
        raise JobValidationError(f"unknown executor {job['executor']!r} "
                                 f"(registered: {', '.join(sorted(queue.executors)) or 'none'})")


@hookimpl(tryfirst=True)
def queuectl_validate_job(job, queue):
    # Runs once per job of a bulk enqueue, where most jobs give a command and little else: the checks
    # of the fields not given are skipped by one set operation each.
    if not _PROTECTED.isdisjoint(job):
        field = next(field for field in PROTECTED_FIELDS if field in job)
        raise JobValidationError(f"field {field!r} is set by queuectl and cannot be given")
    fields = queue.job_fields
    if not _INPUT.issuperset(job) and not all(k in _INPUT or k in fields for k in job):
        known = _INPUT | set(fields)
        unknown = sorted(str(k) for k in job if k not in known)
        raise JobValidationError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if job.get("argv") is not None:
        _check_argv(job)
    _check_command(job)
    if not _OPTIONAL.isdisjoint(job):
        _check_given(job, queue)
    for name, (check, _options, plugin) in fields.items():
        if name in job and check is not None:
            try:
                job[name] = check(job[name])
            except ValueError as exc:
                raise JobValidationError(f"{name}: {exc}") from None
            except Exception as exc:       # the check's own bug, not the user's value: say whose
                raise PluginError(f"plugin {plugin} failed checking job field {name!r}: "
                                  f"{type(exc).__name__}: {exc}") from None
