"""The executor contract: how a job's command is started, watched and stopped.

Executors are registered by name through ``queuectl_register_executors``; a job picks
one with its ``executor`` field (default ``shell``, the built-in subprocess executor).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol

from .models import ExecResult, Job, Lease


@dataclasses.dataclass
class RunContext:
    """What the worker hands an executor for one attempt."""

    attempt: int
    run_id: str                 # unique per attempt; lets the executor find its processes again
    env: dict                   # variables to export: QUEUECTL_JOB_ID, QUEUECTL_ATTEMPT, QUEUECTL_RUN_ID
    config: Any                 # the queue's settings (an executor reads its own keys)
    # Live output, for `logs --follow`: output(chunks, keep) stores [(stream, offset, bytes)] printed so far
    # (offsets count the stream's bytes) and keep {stream: (head_end, window)} drops the stored middle
    # between those offsets (the cap); False when the store was busy (offer it again later). None: not wanted.
    output: Optional[Callable[[list, dict], bool]] = None


class Running(Protocol):
    """A started attempt."""

    pid: Optional[int]
    pgid: Optional[int]

    def wait(self, timeout: float) -> Optional[ExecResult]:
        """Wait up to ``timeout`` seconds; the result once the run is over, else None."""

    def stop(self, grace: float, outcome: str, reason: str) -> ExecResult:
        """Stop the whole run (SIGTERM, then SIGKILL after ``grace``) and return its result."""


class Executor(Protocol):
    def start(self, job: Job, ctx: RunContext) -> Running:
        """Start an attempt; raise OSError or ValueError when it cannot start."""

    def reap(self, job: Job, lease: Lease) -> int:
        """Kill what is left on this host of a run whose worker was lost; return how many processes."""
