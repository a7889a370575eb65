"""The ``python`` executor: a job's command is ``module:function``, its ``args`` and ``kwargs`` JSON.

The function runs in a child process (``python -m queuectl_python.child``) started through
``queuectl.builtin.shell.ProcessExecutor``, so a Python job has every guarantee of a shell job:
timeout and cancel stop its whole process tree, output is captured within ``output-cap``, nothing
it starts outlives the attempt, and a crash (an exception, ``os.abort()``, a segfault) is a failed
attempt, retried like any other.
"""
from __future__ import annotations

import json
import re
import sys

from queuectl import JobValidationError, hookimpl
from queuectl.builtin.shell import ProcessExecutor

TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MAX_PAYLOAD = 100_000      # bytes of JSON: an argument of the child's command line (Linux allows 128 KiB)


class PythonExecutor(ProcessExecutor):
    def argv(self, job, ctx) -> list:
        return [sys.executable, "-m", "queuectl_python.child", job.command, payload(job.fields)]


def payload(fields: dict) -> str:
    return json.dumps({"args": fields.get("args") or [], "kwargs": fields.get("kwargs") or {}},
                      separators=(",", ":"))


def as_json(value):
    """``value`` as JSON gives it back, or a ValueError naming what JSON cannot carry (an object, a
    set, NaN or infinity, a key that is not a string): the worker would otherwise fail on it later."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


def json_list(value):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a JSON array, got {type(value).__name__}")
    return as_json(list(value))


def json_object(value):
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("expected a JSON object with string keys")
    return as_json(value)


@hookimpl
def queuectl_register_executors(register):
    register("python", PythonExecutor())


@hookimpl
def queuectl_register_job_fields(register):
    register("args", check=json_list, help="Positional arguments of a python job's function (JSON array).")
    register("kwargs", check=json_object, help="Keyword arguments of a python job's function (JSON object).")


@hookimpl
def queuectl_validate_job(job, queue):
    if job.get("executor") != "python":
        if "args" in job or "kwargs" in job:
            raise JobValidationError("args and kwargs are for python jobs (add executor: python)")
        return
    if not TARGET.match(job["command"]):
        raise JobValidationError(f"a python job's command is module:function, got {job['command']!r}")
    if len(payload(job).encode()) > MAX_PAYLOAD:
        raise JobValidationError(f"args and kwargs take at most {MAX_PAYLOAD} bytes as JSON; pass a file's path instead")
