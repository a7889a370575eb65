"""queuectl: a background job queue for shell commands, built on pluggy.

The public names below are imported on first use, so that a command pays only for
the modules it needs (``queuectl --help`` never opens a store or loads plugins).
"""
from .errors import JobValidationError, NotFound, QueueError, UsageError

__all__ = ["hookimpl", "Queue", "open_queue", "get_job_logs", "Job", "Attempt", "ExecResult",
           "RetryDecision", "QueueError", "UsageError", "JobValidationError", "NotFound"]
__version__ = "0.1.0"

_LAZY = {
    "hookimpl": "hookspecs",
    "Queue": "queue", "open_queue": "queue", "get_job_logs": "queue",
    "Job": "models", "Attempt": "models", "ExecResult": "models", "RetryDecision": "models",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'queuectl' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
