"""The task the peers in bench_peers run: ``sh -c COMMAND`` with its output captured.

Imported by RQ's work horses (the suite puts the repository on their PYTHONPATH), so it
imports nothing else: huey's instance lives in peer_huey.
"""
from __future__ import annotations

import subprocess


def run_shell(command: str = "true") -> int:
    proc = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    return proc.returncode
