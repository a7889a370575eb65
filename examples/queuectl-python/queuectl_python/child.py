"""What a python job runs: ``python -m queuectl_python.child module:function '{"args":[],"kwargs":{}}'``.

The job's folder is first on ``sys.path`` (``-m`` puts it there), so a module beside the code that
enqueued the job is found. An exception prints its traceback to stderr and exits 1; a return
value other than None is printed to stdout as one JSON line, so ``queuectl logs`` shows it.
"""
from __future__ import annotations

import importlib
import json
import sys


def resolve(target: str):
    module_name, _, attribute = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "func", obj)           # a @task: call the function, not the wrapper


def main(argv: list) -> int:
    target, payload = argv[1], json.loads(argv[2])
    result = resolve(target)(*payload["args"], **payload["kwargs"])
    if result is not None:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
