"""Rows to models, shared by the built-in SQL backends (SQLite and PostgreSQL use the same columns)."""
from __future__ import annotations

import json
import math
from typing import Optional

from queuectl.models import PROCESSING, Attempt, Job, Lease

JOB_COLUMNS = ("id, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout, "
               "source, fields, created_at, updated_at, run_at, last_error, exit_code, lease_owner, lease_host, "
               "lease_pid, lease_pid_start, lease_pgid, lease_expires, lease_token, run_id, started_at, "
               "unique_key, after_ids, waiting_on, cancel_requested, "
               "labels, argv, edits")
N_JOB_COLUMNS = JOB_COLUMNS.count(",") + 1
ATTEMPT_COLUMNS = ("job_id, attempt, outcome, started_at, finished_at, exit_code, signal, error, stdout, stderr, "
                   "worker, host, pid")
HIST_STEPS = 4          # duration histogram buckets per doubling (about 19% wide)


def job_from_row(row) -> Job:
    """A Job from JOB_COLUMNS; one more column, when present, says whether the lease has expired."""
    (id_, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout,
     source, fields, created_at, updated_at, run_at, last_error, exit_code, owner, host, pid, pid_start,
     pgid, expires, token, run_id, started_at, unique_key, after_ids, waiting_on,
     cancel_requested, labels, argv, edits) = row[:N_JOB_COLUMNS]
    lease = None
    if state == PROCESSING and owner is not None:
        lease = Lease(owner=owner, host=host, pid=pid, pid_start=pid_start, token=token, run_id=run_id,
                      expires=expires, pgid=pgid, started_at=started_at,
                      expired=bool(row[N_JOB_COLUMNS]) if len(row) > N_JOB_COLUMNS else False)
    return Job(id=id_, command=command, state=state, attempts=attempts, tries=tries,
               max_retries=max_retries, priority=priority, queue=queue, executor=executor, cwd=cwd,
               env=json.loads(env) if env else {}, timeout=timeout, source=source,
               fields=json.loads(fields) if fields else {}, created_at=created_at, updated_at=updated_at,
               run_at=run_at, last_error=last_error, exit_code=exit_code, lease=lease,
               unique_key=unique_key, after=json.loads(after_ids) if after_ids else [],
               waiting_on=waiting_on, cancel_requested=bool(cancel_requested),
               labels=json.loads(labels) if labels else {}, argv=json.loads(argv) if argv else None,
               edits=json.loads(edits) if edits else [])


def attempt_from_row(row) -> Attempt:
    (job_id, attempt, outcome, started, finished, exit_code, sig, error, out, err, worker, host, pid) = row
    return Attempt(job_id=job_id, attempt=attempt, outcome=outcome, started_at=started, finished_at=finished,
                   exit_code=exit_code, signal=sig, error=error, stdout=bytes(out or b""),
                   stderr=bytes(err or b""), worker=worker, host=host, pid=pid)


def bucket(duration: float) -> int:
    """The duration histogram bucket of an attempt."""
    return int(math.floor(math.log2(max(duration, 1e-6) * 1e6) * HIST_STEPS))


def bucket_value(index: int) -> float:
    return 2 ** ((index + 0.5) / HIST_STEPS) / 1e6


def percentile(hist, total: int, q: float) -> Optional[float]:
    """The q-quantile of the durations, from (bucket, count) rows in bucket order."""
    if not total:
        return None
    target, seen = q * total, 0
    for index, n in hist:
        seen += n
        if seen >= target:
            return round(bucket_value(index), 6)
    return round(bucket_value(hist[-1][0]), 6) if hist else None


def stats_summary(total: int, failed: int, total_duration: float, first: Optional[float], last: Optional[float],
                  hist, recent: int, counts: dict) -> dict:
    """What `queuectl stats` reports, from the counters a store keeps current."""
    span = (last - first) if first is not None and last is not None else 0.0
    return {
        "total_runs": total, "failed_runs": failed,
        "avg_duration": total_duration / total if total else None,
        "p50_duration": percentile(hist, total, 0.50), "p95_duration": percentile(hist, total, 0.95),
        "dead_jobs": counts.get("dead", 0), "completed_jobs": counts.get("completed", 0),
        "throughput": total / span if span > 0 else None,
        "throughput_1m": recent / 60.0,
    }


#: Job fields `queuectl edit` may change, as (field, column) pairs.
EDITABLE_FIELDS = ("command", "argv", "env", "cwd", "timeout", "labels")


def edit_values(job: Job, changes: dict, edit: dict) -> list:
    """Column values for an edit: every editable field (changed or kept) and the history with ``edit`` added."""
    merged = {f: changes.get(f, getattr(job, f)) for f in EDITABLE_FIELDS}
    return [merged["command"], json.dumps(merged["argv"]) if merged["argv"] is not None else None,
            json.dumps(merged["env"]) if merged["env"] else None, merged["cwd"], merged["timeout"],
            json.dumps(merged["labels"]) if merged["labels"] else None, json.dumps(job.edits + [edit])]


EDIT_SET = "command = {m}, argv = {m}, env = {m}, cwd = {m}, timeout = {m}, labels = {m}, edits = {m}"


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` literally (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def job_filters(mark: str, label_clause, grep_op: str, state=None, queue=None, labels=None, grep=None,
                since=None) -> tuple[str, list]:
    """The WHERE clause of `list` and its parameters, for either SQL backend.

    ``mark`` is the placeholder; ``label_clause(key, value)`` gives one label's condition and params.
    """
    clauses, params = [], []
    if state:
        clauses.append(f"state = {mark}")
        params.append(state)
    if queue:
        clauses.append(f"queue = {mark}")
        params.append(queue)
    for key, value in (labels or {}).items():
        clause, extra = label_clause(key, value)
        clauses.append(clause)
        params.extend(extra)
    if grep:
        clauses.append(f"command {grep_op} {mark} ESCAPE '\\'")
        params.append(f"%{like_pattern(grep)}%")
    if since is not None:
        clauses.append(f"created_at >= {mark}")
        params.append(since)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
