"""The built-in retry policy: exponential backoff, an exit-code policy, bounded by max_retries.

Per job: ``backoff_base``, ``retry_on`` (exit codes that retry; others go to the DLQ) and
``dead_on`` (exit codes that go to the DLQ at once). The settings give the defaults.
"""
from __future__ import annotations

import math
import random

from queuectl import hookimpl
from queuectl.config import Setting, between, seconds
from queuectl.models import EXITED, RANGES, RetryDecision, finite, number_text


def exit_codes(value) -> list:
    """[75, 69] from a list or from "75,69"; ValueError for anything that is not 0-255."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"expected a list of exit codes, got {value!r}")
    codes = []
    for item in items:
        if isinstance(item, bool) or str(item).strip() == "":
            raise ValueError(f"not an exit code: {item!r}")
        try:
            code = item if isinstance(item, int) else number_text(str(item))
        except ValueError:
            raise ValueError(f"not an exit code: {item!r}") from None
        if not 0 <= code <= 255:
            raise ValueError(f"exit codes are 0-255, got {code}")
        codes.append(code)
    return codes


def base(value) -> float:
    return RANGES["backoff_base"].check(value)


@hookimpl
def queuectl_register_settings(register):
    register(Setting("backoff-base", 2.0, base, "Retry n waits backoff-scale * backoff-base ** n seconds."))
    register(Setting("backoff-max", 3600.0, seconds(0.0), "Upper bound of one retry delay, in seconds."))
    register(Setting("backoff-scale", 1.0, between(0, 1e6),
                     "Multiplies every delay (tests use 0.05 for fast retries)."))
    register(Setting("backoff-jitter", 0.0, between(0, 1), "Spread each delay randomly by up to this fraction "
                     "(0.2: +-20%), so failed jobs do not retry in lockstep."))
    register(Setting("retry-exit-codes", [], exit_codes, "If set, only these exit codes are retried."))
    register(Setting("dead-exit-codes", [], exit_codes, "Exit codes that go to the DLQ at once (e.g. 64)."))


@hookimpl
def queuectl_register_job_fields(register):
    register("backoff_base", check=base, help="This job's backoff base.")
    register("retry_on", check=exit_codes, help="Exit codes that are retried; any other goes to the DLQ.")
    register("dead_on", check=exit_codes, help="Exit codes that go to the DLQ at once.")


def _exit_code_verdict(job, attempt, config):
    """A reason to give up now because of the exit code, or None."""
    if attempt.outcome != EXITED or attempt.exit_code is None:
        return None                     # timeouts, signals and lost workers follow the budget
    code = attempt.exit_code
    if code in job.fields.get("dead_on", config.get("dead-exit-codes")):
        return f"exit code {code} is not retried (dead_on)"
    retry_on = job.fields.get("retry_on", config.get("retry-exit-codes"))
    if retry_on and code not in retry_on:
        return f"exit code {code} is not one that is retried ({', '.join(map(str, retry_on))})"
    return None


def _delay(scale: float, growth: float, n: int, cap: float) -> float:
    """min(scale * growth ** n, cap) without overflowing: growth ** n exceeds a float after some retries."""
    growth = min(max(finite(growth, 2.0), 1.0), 1000.0)      # a job stored by another tool may hold anything
    if scale <= 0 or cap <= 0:
        return 0.0
    if n * math.log(growth) + math.log(scale) >= math.log(cap):
        return cap
    return scale * growth ** n


@hookimpl(trylast=True)
def queuectl_retry_decision(job, attempt, queue):
    config = queue.config
    verdict = _exit_code_verdict(job, attempt, config)
    if verdict:
        return RetryDecision(False, reason=verdict)
    retries_used = job.tries - 1          # tries counts the first attempt too
    if retries_used >= job.max_retries:
        return RetryDecision(False, reason=f"gave up after {job.tries} attempt(s): {attempt.error or attempt.outcome}")
    n = retries_used + 1
    growth = job.fields.get("backoff_base", config.get("backoff-base"))
    delay = _delay(config.get("backoff-scale"), growth, n, config.get("backoff-max"))
    jitter = min(config.get("backoff-jitter"), 1.0)
    if jitter:
        delay *= random.uniform(1 - jitter, 1 + jitter)
    return RetryDecision(True, delay=delay)
