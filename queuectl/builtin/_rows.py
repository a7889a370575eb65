"""Rows to models, shared by the built-in SQL backends (SQLite and PostgreSQL use the same columns)."""
from __future__ import annotations

import math
from typing import Optional

from queuectl._lazy import LazyImport
from queuectl.models import INT64_MAX, MAX_SECONDS, PROCESSING, Attempt, Job, Lease, finite

json = LazyImport("json", globals())

JOB_COLUMNS = ("id, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout, "
               "source, fields, created_at, updated_at, run_at, last_error, exit_code, lease_owner, lease_host, "
               "lease_pid, lease_pid_start, lease_pgid, lease_expires, lease_token, run_id, started_at, "
               "unique_key, after_ids, waiting_on, cancel_requested, "
               "labels, argv, edits")
N_JOB_COLUMNS = JOB_COLUMNS.count(",") + 1
ATTEMPT_COLUMNS = ("job_id, attempt, outcome, started_at, finished_at, exit_code, signal, error, stdout, stderr, "
                   "worker, host, pid")
# an attempt without its output (the dashboard's list of attempts): the output's sizes instead
SUMMARY_COLUMNS = ATTEMPT_COLUMNS.replace("stdout, stderr", "length(stdout), length(stderr)")
HIST_STEPS = 4          # duration histogram buckets per doubling (about 19% wide)


# Reading is total: a row written by another tool (sqlite3, psql) or before a range existed still
# maps to a Job that lists, shows and runs; an absurd value reads as the nearest sane one.

def _text(value, default: Optional[str] = None) -> Optional[str]:
    if type(value) is str:          # (the common case first: a worker reads two jobs per attempt)
        return value
    if value is None:
        return default
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _int(value, default: Optional[int] = 0) -> Optional[int]:
    if type(value) is int and -INT64_MAX <= value <= INT64_MAX:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return max(-INT64_MAX, min(INT64_MAX, value))
    number = finite(value)
    return default if number is None else int(max(-INT64_MAX, min(INT64_MAX, number)))


def _json(value, kind: type):
    if not value or value == EMPTY[kind]:
        return kind()
    try:
        out = json.loads(value)
    except (ValueError, TypeError, RecursionError):
        return kind()
    return out if isinstance(out, kind) else kind()


EMPTY = {dict: "{}", list: "[]"}


def _env(value) -> dict:
    return {str(k): _text(v, "") for k, v in _json(value, dict).items()}


def _float(value, default: Optional[float] = None) -> Optional[float]:
    if type(value) is float and value - value == 0.0:       # finite (NaN and infinities give NaN)
        return value
    return finite(value, default)


def _timeout(value) -> Optional[float]:
    seconds = finite(value)
    return seconds if seconds is not None and seconds > 0 else None


def schedule_from_row(row) -> dict:
    """A stored schedule (name, cron, spec, missed, last_tick, created_at) as a dict, whatever the row holds."""
    name, cron, spec, missed, last_tick, created_at = row
    return {"name": _text(name, ""), "cron": _text(cron, ""), "spec": _json(spec, dict),
            "missed": _text(missed, "once"), "last_tick": _float(last_tick, 0.0) or 0.0,
            "created_at": _float(created_at, 0.0) or 0.0}


def receipt_from_row(row) -> dict:
    """A stored receipt (key, name, sha256, job_ids, created_at) as a dict, whatever the row holds."""
    key, name, sha, job_ids, created = row
    return {"key": _text(key, ""), "name": _text(name), "sha256": _text(sha),
            "job_ids": [_text(i, "") for i in _json(job_ids, list)], "created_at": _float(created, 0.0) or 0.0}


def split_ids(ids: list[str], deliveries: list) -> list[list[str]]:
    """The ids of a batch stored in one go, cut back into the deliveries it was made of."""
    split, start = [], 0
    for jobs, _ in deliveries:
        split.append(ids[start:start + len(jobs)])
        start += len(jobs)
    return split


def receipt_conflict(keys: list[str]) -> str:
    if len(keys) == 1:
        return f"receipt {keys[0]!r} is already recorded"
    return f"a receipt of this batch of {len(keys)} ({keys[0]!r}, ...) is already recorded"


def job_from_row(row) -> Job:
    """A Job from JOB_COLUMNS; one more column, when present, says whether the lease has expired.

    A worker reads one per attempt, so each column's common case (the type the column holds, or NULL
    for the JSON ones) is tested here, inline, with the exact condition under which its reader would
    return the value unchanged; anything else goes through the reader. A Python call per column cost
    more than a third of the function."""
    (id_, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout,
     source, fields, created_at, updated_at, run_at, last_error, exit_code, owner, host, pid, pid_start,
     pgid, expires, token, run_id, started_at, unique_key, after_ids, waiting_on,
     cancel_requested, labels, argv, edits) = row[:N_JOB_COLUMNS]
    lease = None
    if state == PROCESSING and owner is not None:
        lease = Lease(owner if type(owner) is str else _text(owner), host if type(host) is str else _text(host, ""),
                      pid if type(pid) is int and -INT64_MAX <= pid <= INT64_MAX else _int(pid),
                      pid_start if type(pid_start) is int and -INT64_MAX <= pid_start <= INT64_MAX
                      else _int(pid_start, None),
                      token if type(token) is int and -INT64_MAX <= token <= INT64_MAX else _int(token),
                      run_id if type(run_id) is str else _text(run_id, ""),
                      expires if type(expires) is float and expires - expires == 0.0 else _float(expires, 0.0),
                      pgid if type(pgid) is int and -INT64_MAX <= pgid <= INT64_MAX else _int(pgid, None),
                      started_at if type(started_at) is float and started_at - started_at == 0.0
                      else _float(started_at),
                      bool(row[N_JOB_COLUMNS]) if len(row) > N_JOB_COLUMNS else False)
    return Job(id_ if type(id_) is str else _text(id_, ""), command if type(command) is str else _text(command, ""),
               state if type(state) is str else _text(state, ""),
               attempts if type(attempts) is int and -INT64_MAX <= attempts <= INT64_MAX else _int(attempts),
               max_retries if type(max_retries) is int and -INT64_MAX <= max_retries <= INT64_MAX
               else _int(max_retries),
               created_at if type(created_at) is float and created_at - created_at == 0.0 else _float(created_at, 0.0),
               updated_at if type(updated_at) is float and updated_at - updated_at == 0.0 else _float(updated_at, 0.0),
               run_at if type(run_at) is float and run_at - run_at == 0.0 else _float(run_at, 0.0),
               priority if type(priority) is int and -INT64_MAX <= priority <= INT64_MAX else _int(priority),
               queue if type(queue) is str else _text(queue, "default"),
               executor if type(executor) is str else _text(executor, "shell"),
               cwd if type(cwd) is str else _text(cwd),
               {} if env is None else _env(env),
               None if timeout is None else _timeout(timeout),
               source if type(source) is str else _text(source),
               {} if fields is None else _json(fields, dict),
               tries if type(tries) is int and -INT64_MAX <= tries <= INT64_MAX else _int(tries),
               unique_key if type(unique_key) is str else _text(unique_key),
               [] if after_ids is None else [_text(a) for a in _json(after_ids, list)],
               waiting_on if type(waiting_on) is int and -INT64_MAX <= waiting_on <= INT64_MAX else _int(waiting_on),
               cancel_requested != 0 if type(cancel_requested) is int else bool(_int(cancel_requested)),
               {} if labels is None else {_text(k): _text(v) for k, v in _json(labels, dict).items()},
               None if argv is None else [_text(a) for a in _json(argv, list)] or None,
               [] if edits is None else _json(edits, list),
               last_error if type(last_error) is str else _text(last_error),
               exit_code if type(exit_code) is int and -INT64_MAX <= exit_code <= INT64_MAX else _int(exit_code, None),
               lease)


def finished_job(claimed: Job, state: str, run_at: float, error: Optional[str], exit_code: Optional[int],
                 tries: int, updated_at: float, waiting_on, cancel_requested) -> Job:
    """The job as the finish statement leaves its row, built from the job as its claim read it.

    Only the store's finish may call it, under the claim's lease (same token) and in the same
    transaction as its UPDATE: while a job is processing only its lease, ``waiting_on`` and
    ``cancel_requested`` change in its row (edit and retry refuse a processing job), the lease is
    cleared by the finish, and the other two are read again by the caller. A worker reads one job
    row per attempt instead of two. The values pass through the readers job_from_row uses, so the
    job is the one a read of the row would give.
    """
    return Job(claimed.id, claimed.command, state, claimed.attempts, claimed.max_retries, claimed.created_at,
               updated_at, run_at if type(run_at) is float and run_at - run_at == 0.0 else _float(run_at, 0.0),
               claimed.priority, claimed.queue, claimed.executor, claimed.cwd, dict(claimed.env), claimed.timeout,
               claimed.source, dict(claimed.fields), tries, claimed.unique_key, list(claimed.after),
               waiting_on if type(waiting_on) is int and -INT64_MAX <= waiting_on <= INT64_MAX else _int(waiting_on),
               cancel_requested != 0 if type(cancel_requested) is int else bool(_int(cancel_requested)),
               dict(claimed.labels), None if claimed.argv is None else list(claimed.argv), list(claimed.edits),
               error if error is None or type(error) is str else _text(error),
               exit_code if exit_code is None or type(exit_code) is int and -INT64_MAX <= exit_code <= INT64_MAX
               else _int(exit_code, None),
               None)


def _bytes(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()


def attempt_from_row(row) -> Attempt:
    (job_id, attempt, outcome, started, finished, exit_code, sig, error, out, err, worker, host, pid) = row
    return Attempt(job_id=_text(job_id, ""), attempt=_int(attempt), outcome=_text(outcome, ""),
                   started_at=finite(started, 0.0), finished_at=finite(finished, 0.0),
                   exit_code=_int(exit_code, None), signal=_int(sig, None), error=_text(error),
                   stdout=_bytes(out), stderr=_bytes(err), worker=_text(worker), host=_text(host),
                   pid=_int(pid, None))


def summaries_sql(table: str, mark: str) -> str:
    """The newest attempts of a job numbered between two bounds (job_id, after, before, limit)."""
    return (f"SELECT {SUMMARY_COLUMNS} FROM {table} WHERE job_id = {mark} AND attempt > {mark} "
            f"AND attempt < {mark} ORDER BY attempt DESC LIMIT {mark}")


def summary_from_row(row) -> tuple:
    """(the attempt with empty output, its stdout's size, its stderr's size) from a SUMMARY_COLUMNS row."""
    return attempt_from_row((*row[:8], None, None, *row[10:])), _int(row[8]), _int(row[9])


def settings_from_rows(rows) -> dict:
    """Stored settings; a value that is not JSON is passed on as its text, for the setting to refuse."""
    out = {}
    for key, value in rows:
        try:
            out[_text(key)] = json.loads(value)
        except (ValueError, TypeError, RecursionError):
            out[_text(key)] = _text(value)
    return out


def bucket(duration: float) -> int:
    """The duration histogram bucket of an attempt."""
    duration = min(finite(duration, 0.0), MAX_SECONDS)
    return int(math.floor(math.log2(max(duration, 1e-6) * 1e6) * HIST_STEPS))


def bucket_value(index: int) -> float:
    index = max(0, min(bucket(MAX_SECONDS), _int(index)))       # a bucket written by another tool
    return 2 ** ((index + 0.5) / HIST_STEPS) / 1e6


def percentile(hist, total: int, q: float) -> Optional[float]:
    """The q-quantile of the durations, from (bucket, count) rows in bucket order."""
    if not total:
        return None
    target, seen = q * total, 0
    for index, n in hist:
        seen += _int(n)
        if seen >= target:
            return round(bucket_value(index), 6)
    return round(bucket_value(hist[-1][0]), 6) if hist else None


def stats_summary(total: int, failed: int, total_duration: float, first: Optional[float], last: Optional[float],
                  hist, recent: int, counts: dict) -> dict:
    """What `queuectl stats` reports, from the counters a store keeps current."""
    total, failed, total_duration = _int(total), _int(failed), finite(total_duration, 0.0)
    first, last = finite(first), finite(last)
    span = (last - first) if first is not None and last is not None else 0.0
    return {
        "total_runs": total, "failed_runs": failed,
        "avg_duration": finite(total_duration / total) if total else None,
        "p50_duration": percentile(hist, total, 0.50), "p95_duration": percentile(hist, total, 0.95),
        "dead_jobs": counts.get("dead", 0), "completed_jobs": counts.get("completed", 0),
        "throughput": finite(total / span) if span > 0 else None,
        "throughput_1m": _int(recent) / 60.0,
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
                since=None, grep_column: str = "command") -> tuple[str, list]:
    """The WHERE clause of `list` and its parameters, for either SQL backend.

    ``mark`` is the placeholder; ``label_clause(key, value)`` gives one label's condition and params;
    ``grep_column`` the expression ``grep`` is matched against.
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
        clauses.append(f"{grep_column} {grep_op} {mark} ESCAPE '\\'")
        params.append(f"%{like_pattern(grep)}%")
    if since is not None:
        clauses.append(f"created_at >= {mark}")
        params.append(since)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


# --- the dashboard's reads: time series and job pages ------------------------------------------------

SERIES_SLOTS = 1440     # the per-minute rollup is a ring of one day: slot = minute % SERIES_SLOTS
SCAN_BUDGET = 20000     # rows a job page examines for a text filter (no index serves it)


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

    State, queue, and both are served by indexes (jobs_state, jobs_queue, jobs_queue_state), so a
    page costs the same at any number of jobs. A text filter, which no index serves, looks at a
    window of at most SCAN_BUDGET rows; when the page is not full, ``next`` says where to go on.
    ``contains(column)`` is the backend's SQL for "position of the parameter in column".
    """
    where, params = job_filters(mark, None, None, state=state, queue=queue)
    if before is not None:
        where += f" {'AND' if where else 'WHERE'} seq < {mark}"
        params.append(int(before))
    outer, extra = [], []
    if text:
        outer.append(f"({contains('command')} > 0 OR {contains('id')} = 1)")
        extra += [text, text]
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
