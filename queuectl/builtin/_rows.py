"""Rows to models, shared by the built-in SQL backends (SQLite and PostgreSQL use the same columns)."""
from __future__ import annotations

import json
import math
from typing import Optional

from queuectl.models import PROCESSING, Attempt, Job, Lease

JOB_COLUMNS = ("id, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout, "
               "source, fields, created_at, updated_at, run_at, last_error, exit_code, lease_owner, lease_host, "
               "lease_pid, lease_pid_start, lease_pgid, lease_expires, lease_token, run_id, started_at, "
               "unique_key, after_ids, waiting_on, cancel_requested")
N_JOB_COLUMNS = JOB_COLUMNS.count(",") + 1
ATTEMPT_COLUMNS = ("job_id, attempt, outcome, started_at, finished_at, exit_code, signal, error, stdout, stderr, "
                   "worker, host, pid")
HIST_STEPS = 4          # duration histogram buckets per doubling (about 19% wide)


def job_from_row(row) -> Job:
    """A Job from JOB_COLUMNS; one more column, when present, says whether the lease has expired."""
    (id_, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout,
     source, fields, created_at, updated_at, run_at, last_error, exit_code, owner, host, pid, pid_start,
     pgid, expires, token, run_id, started_at, unique_key, after_ids, waiting_on,
     cancel_requested) = row[:N_JOB_COLUMNS]
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
               waiting_on=waiting_on, cancel_requested=bool(cancel_requested))


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


# --- the dashboard's reads: time series and job pages ------------------------------------------------

SERIES_SLOTS = 1440     # the per-minute rollup is a ring of one day: slot = minute % SERIES_SLOTS
SCAN_BUDGET = 20000     # rows a job page examines for a filter no index serves (text, queue alone)


def series_row(a: Attempt, finished: Optional[float] = None) -> tuple:
    """(slot, bucket, minute, n, failed) of one attempt for the per-minute rollup."""
    minute = int((a.finished_at if finished is None else finished) // 60)
    return (minute % SERIES_SLOTS, bucket(a.duration), minute, 1, 0 if a.ok else 1)


def series_backfill(rows) -> list[tuple]:
    """Rollup rows from stored attempts (started_at, finished_at, outcome), oldest minute first."""
    cells: dict = {}
    for started, finished, outcome in rows:
        key = (int(finished // 60), bucket(max(0.0, finished - started)))
        n, failed = cells.get(key, (0, 0))
        cells[key] = (n + 1, failed + (outcome != "succeeded"))
    return [(m % SERIES_SLOTS, b, m, n, f) for (m, b), (n, f) in sorted(cells.items())]


def series_points(rows, now: float, window: float, step: int) -> list[dict]:
    """Bins of ``step`` seconds covering the last ``window`` seconds, oldest first, from rollup rows
    (bin = minute * 60 // step, bucket, n, failed): runs, failed attempts and duration percentiles."""
    first, last = int((now - window) // step), int(now // step)
    bins: dict = {k: {} for k in range(first, last + 1)}
    failed = dict.fromkeys(bins, 0)
    for k, bucket_index, n, bad in rows:
        k = int(k)
        if k in bins:
            bins[k][bucket_index] = bins[k].get(bucket_index, 0) + int(n)
            failed[k] += int(bad)
    points = []
    for k, hist in bins.items():
        ordered = sorted(hist.items())
        runs = sum(hist.values())
        points.append({"t": k * step, "runs": runs, "failed": failed[k],
                       **{f"p{q}": percentile(ordered, runs, q / 100) for q in (50, 95, 99)}})
    return points


def keyset_page(read, table: str, mark: str, contains, state=None, queue=None, text=None, before=None,
                limit: int = 50) -> dict:
    """Newest jobs first, ``limit`` at a time, after the cursor ``before`` (a seq).

    State, and queue with state, are served by indexes (jobs_state, jobs_queue_state), so a page
    costs the same at any number of jobs. A filter no index serves (text, a queue alone) looks at
    a window of at most SCAN_BUDGET rows; when the page is not full, ``next`` says where to go on.
    ``contains(column)`` is the backend's SQL for "position of the parameter in column".
    """
    inner, params = [], []
    if state:
        inner.append(f"state = {mark}")
        params.append(state)
        if queue:
            inner.append(f"queue = {mark}")
            params.append(queue)
    if before is not None:
        inner.append(f"seq < {mark}")
        params.append(int(before))
    outer, extra = [], []
    if queue and not state:
        outer.append(f"queue = {mark}")
        extra.append(queue)
    if text:
        outer.append(f"({contains('command')} > 0 OR {contains('id')} = 1)")
        extra += [text, text]
    where = ("WHERE " + " AND ".join(inner)) if inner else ""
    if not outer:
        rows = read(f"SELECT {JOB_COLUMNS}, seq FROM {table} {where} ORDER BY seq DESC LIMIT {mark}",
                    (*params, limit + 1))
        return {"jobs": [job_from_row(r[:-1]) for r in rows[:limit]],
                "next": rows[limit - 1][-1] if len(rows) > limit else None}
    window = f"SELECT seq FROM {table} {where} ORDER BY seq DESC LIMIT {mark}"
    rows = read(f"SELECT {JOB_COLUMNS}, seq FROM {table} WHERE seq IN ({window}) AND {' AND '.join(outer)} "
                f"ORDER BY seq DESC LIMIT {mark}", (*params, SCAN_BUDGET, *extra, limit + 1))
    if len(rows) > limit:
        return {"jobs": [job_from_row(r[:-1]) for r in rows[:limit]], "next": rows[limit - 1][-1]}
    seen, lowest = read(f"SELECT COUNT(*), MIN(seq) FROM ({window}) AS w", (*params, SCAN_BUDGET))[0]
    return {"jobs": [job_from_row(r[:-1]) for r in rows],
            "next": lowest if seen >= SCAN_BUDGET else None}
