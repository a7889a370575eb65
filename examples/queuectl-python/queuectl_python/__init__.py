"""Python functions as queuectl jobs.

    from queuectl_python import task

    @task(max_retries=5, timeout=60)
    def resize(path, width=100):
        ...

    resize.delay("cat.png", width=200)      # enqueued; a worker runs resize("cat.png", width=200)
    resize("cat.png")                       # still an ordinary call

``delay`` enqueues a job with ``executor: python``, ``command: module:function`` and the arguments
as JSON into the queue that ``queuectl`` commands in this folder use (``connect()`` picks another).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

__all__ = ["task", "Task", "connect"]
__version__ = "0.1.0"

_queue = None


def connect(queue=None, **open_kwargs):
    """Use this Queue (or ``queuectl.Queue.open(**open_kwargs)``) for every ``delay``; returns it."""
    global _queue
    if queue is None:
        from queuectl import Queue

        queue = Queue.open(**open_kwargs)
    _queue = queue
    return queue


def _default_queue():
    return _queue if _queue is not None else connect()


class Task:
    """A function that can also be enqueued: ``delay(*args, **kwargs)`` returns the job id."""

    def __init__(self, func: Callable, fields: dict):
        functools.update_wrapper(self, func)
        self.func = func
        self.fields = fields

    def __call__(self, *args, **kwargs):
        return self.func(*args, **kwargs)

    @property
    def target(self) -> str:
        """``module:function``, as the worker imports it."""
        module = self.func.__module__
        if module == "__main__":            # a script: the worker imports it by its file name
            path = getattr(sys.modules["__main__"], "__file__", None)
            if not path:
                from queuectl import UsageError

                raise UsageError(f"{self.func.__name__} is defined interactively: define a task in a module "
                                 f"so that a worker can import it")
            module = os.path.splitext(os.path.basename(path))[0]
        return f"{module}:{self.func.__qualname__}"

    def delay(self, *args, **kwargs) -> str:
        return self.enqueue(args, kwargs)

    def enqueue(self, args=(), kwargs: Optional[dict] = None, **fields: Any) -> str:
        """Enqueue with job fields of this call (``id``, ``delay``, ``priority``...) over the decorator's."""
        spec = dict(self.fields, **fields)
        spec.update(command=self.target, executor="python", args=list(args), kwargs=dict(kwargs or {}))
        return _default_queue().enqueue(spec)


def task(func: Optional[Callable] = None, **fields: Any):
    """``@task`` or ``@task(max_retries=5, queue="images", timeout=60)``: any job field."""
    if func is not None:
        return Task(func, {})
    return lambda f: Task(f, fields)
