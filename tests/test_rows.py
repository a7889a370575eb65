"""Reading a job row is total and exact: the worker's inline fast paths give what the readers give.

``job_from_row`` tests each column's common case inline (a worker reads a job per attempt) and
hands anything else to the column's reader. ``reference`` below is the plain composition of those
readers, column by column: for any row, well-formed or not (a store written by another tool), both
must build the same job. ``finished_job`` is checked the same way against a fresh read of the row
by the store contract tests (``test_finish_returns_the_job_as_stored``).
"""
from __future__ import annotations

import math

import pytest

from queuectl.builtin._rows import (N_JOB_COLUMNS, _env, _float, _int, _json, _text, _timeout, finished_job,
                                    job_from_row)
from queuectl.models import INT64_MAX, PROCESSING, Job, Lease

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st   # noqa: E402


def reference(row) -> Job:
    (id_, command, state, attempts, tries, max_retries, priority, queue, executor, cwd, env, timeout,
     source, fields, created_at, updated_at, run_at, last_error, exit_code, owner, host, pid, pid_start,
     pgid, expires, token, run_id, started_at, unique_key, after_ids, waiting_on,
     cancel_requested, labels, argv, edits) = row[:N_JOB_COLUMNS]
    lease = None
    if state == PROCESSING and owner is not None:
        lease = Lease(owner=_text(owner), host=_text(host, ""), pid=_int(pid), pid_start=_int(pid_start, None),
                      token=_int(token), run_id=_text(run_id, ""), expires=_float(expires, 0.0),
                      pgid=_int(pgid, None), started_at=_float(started_at),
                      expired=bool(row[N_JOB_COLUMNS]) if len(row) > N_JOB_COLUMNS else False)
    return Job(id=_text(id_, ""), command=_text(command, ""), state=_text(state, ""), attempts=_int(attempts),
               tries=_int(tries), max_retries=_int(max_retries), priority=_int(priority),
               queue=_text(queue, "default"), executor=_text(executor, "shell"), cwd=_text(cwd),
               env=_env(env), timeout=_timeout(timeout), source=_text(source), fields=_json(fields, dict),
               created_at=_float(created_at, 0.0), updated_at=_float(updated_at, 0.0), run_at=_float(run_at, 0.0),
               last_error=_text(last_error), exit_code=_int(exit_code, None), lease=lease,
               unique_key=_text(unique_key), after=[_text(a) for a in _json(after_ids, list)],
               waiting_on=_int(waiting_on), cancel_requested=bool(_int(cancel_requested)),
               labels={_text(k): _text(v) for k, v in _json(labels, dict).items()},
               argv=[_text(a) for a in _json(argv, list)] or None, edits=_json(edits, list))


def attributes(job) -> dict:
    state = dict(vars(job))
    if job.lease is not None:
        state["lease"] = dict(vars(job.lease))
    return state


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN (a reader never returns one; this only keeps the check honest)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# What a column may hold: what SQLite and psycopg give back, including what another tool may have written.
EDGE_INTS = [0, 1, -1, 2, INT64_MAX, -INT64_MAX, -INT64_MAX - 1, 2 ** 63, -(2 ** 64), 2 ** 70]
VALUES = st.one_of(
    st.none(), st.booleans(), st.sampled_from(EDGE_INTS), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, 5e-324]),
    st.text(max_size=12), st.sampled_from(["", "{}", "[]", "null", '{"A": "1", "B": 2}', '["x", 1, null]',
                                           '{"k": "v"}', "not json", "processing", "pending", "1.5", "nan"]),
    st.binary(max_size=8), st.sampled_from([b"\xff\xfe", b"processing"]),
)


@st.composite
def rows(draw):
    row = [draw(VALUES) for _ in range(N_JOB_COLUMNS)]
    if draw(st.booleans()):
        row[2] = "processing"               # a lease is read only for a processing job with an owner
        row[19] = draw(st.one_of(st.text(max_size=6), VALUES))
    if draw(st.booleans()):
        row.append(draw(VALUES))            # leases(): whether the lease has expired
    return tuple(row)


@settings(max_examples=400, deadline=None)
@given(rows())
def test_a_row_of_anything_reads_as_the_readers_read_it(row):
    fast, slow = attributes(job_from_row(row)), attributes(reference(row))
    assert fast.keys() == slow.keys()
    for name in slow:
        assert same(fast[name], slow[name]), (name, row, fast[name], slow[name])


def test_a_well_formed_row_of_every_kind_of_column_reads_the_same():
    row = ("id1", "echo hi", "processing", 2, 1, 3, -5, "q", "shell", "/tmp", '{"A": "1"}', 2.5, "spool", '{"f": [1]}',
           1.5, 2.5, 3.5, "boom", 7, "w-1", "host", 123, 456, 789, 99.5, 4, "run", 1.25, "key", '["a", "b"]', 1, 1,
           '{"team": "x"}', '["printf", "%s"]', '[{"at": 1}]', 0)
    assert attributes(job_from_row(row)) == attributes(reference(row))
    assert job_from_row(row).lease is not None and job_from_row(row).cancel_requested is True


@settings(max_examples=200, deadline=None)
@given(rows(), st.sampled_from(["completed", "failed", "dead"]), VALUES, VALUES, VALUES, st.integers(0, 10),
       st.floats(allow_nan=False), VALUES, VALUES)
def test_a_finished_job_is_built_with_the_readers_of_its_columns(row, state, run_at, error, exit_code, tries,
                                                                 updated_at, waiting_on, cancel):
    claimed = job_from_row(row)
    built = attributes(finished_job(claimed, state, run_at, error, exit_code, tries, updated_at, waiting_on, cancel))
    expected = attributes(claimed)
    expected.update(state=state, run_at=_float(run_at, 0.0), last_error=_text(error), exit_code=_int(exit_code, None),
                    tries=tries, updated_at=updated_at, waiting_on=_int(waiting_on),
                    cancel_requested=bool(_int(cancel)), lease=None)
    for name in expected:
        assert same(built[name], expected[name]), (name, built[name], expected[name])
    for name in ("env", "fields", "labels", "after", "edits", "argv"):      # copies, not the claim's own
        assert built[name] is None or built[name] is not getattr(claimed, name)
