"""The built-in retry policy: exponential backoff, bounded by max_retries and backoff-max."""
from __future__ import annotations

from queuectl import hookimpl
from queuectl.config import Setting, number
from queuectl.models import RetryDecision


@hookimpl
def queuectl_register_settings(register):
    register(Setting("backoff-base", 2.0, number(1.0), "Retry n waits backoff-base ** n seconds."))
    register(Setting("backoff-max", 3600.0, number(0.0), "Upper bound of one retry delay, in seconds."))
    register(Setting("backoff-scale", 1.0, number(0.0), "Multiplies every delay (tests use 0.05 for fast retries)."))


@hookimpl(trylast=True)
def queuectl_retry_decision(job, attempt, queue):
    retries_used = job.tries - 1          # tries counts the first attempt too
    if retries_used >= job.max_retries:
        return RetryDecision(False, reason=f"gave up after {job.tries} attempt(s): {attempt.error or attempt.outcome}")
    n = retries_used + 1
    config = queue.config
    delay = min(config.get("backoff-scale") * config.get("backoff-base") ** n, config.get("backoff-max"))
    return RetryDecision(True, delay=delay)
