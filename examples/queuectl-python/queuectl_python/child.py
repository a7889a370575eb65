"""What a python job runs: ``python -m queuectl_python.child module:function '{"args":[],"kwargs":{}}'``.

The job's folder is first on ``sys.path`` (``-m`` puts it there), so a module beside the code that
enqueued the job is found. An exception prints its traceback to stderr and exits 1; a return
value other than None is printed to stdout as one JSON line, so ``queuectl logs`` shows it.
"""
from __future__ import annotations

import importlib
import json
import sys


class NotFound(Exception):
    """The job's module:function cannot be found or called: one line on stderr, exit 1 (retried, since
    a deploy may bring the module), never a traceback of this module's own code."""


def resolve(target: str):
    module_name, _, attribute = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):       # the job's module, not one it imports
            raise NotFound(f"cannot import {module_name!r}: {exc}") from None
        raise
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise NotFound(f"{target}: {getattr(obj, '__name__', type(obj).__name__)} has no attribute {part!r}") from None
    obj = getattr(obj, "func", obj)           # a @task: call the function, not the wrapper
    if not callable(obj):
        raise NotFound(f"{target} is not callable: {obj!r:.60}")
    return obj


def main(argv: list) -> int:
    target, payload = argv[1], json.loads(argv[2])
    try:
        function = resolve(target)
    except NotFound as exc:
        print(f"queuectl-python: {exc}", file=sys.stderr)
        return 1
    result = function(*payload["args"], **payload["kwargs"])
    if result is not None:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
