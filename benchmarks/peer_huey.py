"""huey's instance for bench_peers: SqliteHuey on the file named by $BENCH_HUEY_DB.

The suite sets that variable for itself and for ``huey_consumer benchmarks.peer_huey.huey``.
"""
from __future__ import annotations

import os

from .peer_tasks import run_shell

huey = None
if os.environ.get("BENCH_HUEY_DB"):
    try:
        from huey import SqliteHuey
    except ImportError:                  # the suite says so and skips huey
        pass
    else:
        huey = SqliteHuey("queuectl-bench", filename=os.environ["BENCH_HUEY_DB"])

if huey is not None:
    @huey.task()
    def huey_shell(command: str = "true") -> int:
        return run_shell(command)
