"""Live output: what a running attempt has printed so far, stored in chunks while it runs.

An executor hands its output to the worker's OutputSink (``RunContext.output``); the store
keeps it as chunks keyed by job, attempt, stream and byte offset in the stream, and keeps
only what the cap keeps (the head, and a tail that moves on), so a running attempt holds
about ``output-cap`` per stream. When the attempt is recorded, its output is stored with it
as before; the chunks stay for RETENTION seconds so that a follower reads to the very end,
then a pool deletes them. ``follow`` turns all this into one stream of events for
``logs --follow``; on PostgreSQL it sleeps on LISTEN, on SQLite it polls one indexed read.
"""
from __future__ import annotations

import select
import time
from typing import Iterator, Optional

from . import models
from .errors import NotFound, QueueError

RETENTION = 60.0        # seconds the chunks of a finished attempt are kept for followers
SINK_WAIT = 0.25        # how long a worker waits for a busy store to take output (it offers it again later)
POLL = 0.05             # a follower's poll where the store cannot wake it (SQLite)
WAKE_POLL = 0.5         # a follower's poll for state changes where output wakes it (PostgreSQL)
STREAMS = ("stdout", "stderr")
PURGED = "purged"       # the state reported for a job deleted (`purge`) while it was followed or waited for


def truncation_marker(dropped: int) -> bytes:
    """What stands in for the middle of an output longer than the cap."""
    return f"\n[... queuectl: {dropped} bytes truncated ...]\n".encode()


def purged(job_id: str) -> models.Job:
    """What a job deleted while it was watched finished as: state ``purged`` (finished, not completed)."""
    return models.Job(id=job_id, command="", state=PURGED)


def current(queue, job_id: str) -> models.Job:
    """The job as it is now; a job purged meanwhile (found no more) is ``purged``, never an error."""
    try:
        return queue.get(job_id)
    except NotFound:
        return purged(job_id)


def supported(store) -> bool:
    """Whether the store keeps live output (a third-party backend may not)."""
    return hasattr(store, "append_output")


def live_output_sink(store, job_id: str, attempt: int) -> Optional["OutputSink"]:
    return OutputSink(store, job_id, attempt) if supported(store) else None


def expire_live_output(store) -> int:
    """Delete the chunks of attempts that ended RETENTION seconds ago (a pool does it every tick)."""
    if not supported(store):
        return 0
    try:
        return store.expire_output(RETENTION)
    except QueueError:
        return 0                  # a busy store: the next tick tries again


class OutputSink:
    """The worker's side of ``RunContext.output``: one store write per batch, never a long wait."""

    def __init__(self, store, job_id: str, attempt: int):
        self.store, self.job_id, self.attempt = store, job_id, attempt

    def __call__(self, chunks: list, keep: dict) -> bool:
        before = self.store.lock_timeout
        self.store.lock_timeout = SINK_WAIT      # a locked store must not hold up heartbeats and fencing
        try:
            self.store.append_output(self.job_id, self.attempt, chunks, keep)
            return True
        except QueueError:
            return False
        finally:
            self.store.lock_timeout = before


class Assembler:
    """Puts chunks back together per stream; a gap (the trimmed middle) becomes a truncation marker."""

    def __init__(self):
        self.cursor = 0                                  # the last chunk seen (its seq)
        self.ends = {name: 0 for name in STREAMS}        # bytes of each stream seen so far

    def feed(self, rows) -> list[tuple[str, bytes]]:
        pieces = []
        for seq, stream, offset, data in rows:
            self.cursor = max(self.cursor, seq)
            end = self.ends[stream]
            if offset > end:
                pieces.append((stream, truncation_marker(offset - end)))
            elif offset < end:
                data = data[end - offset:]
            if data:
                pieces.append((stream, bytes(data)))
            self.ends[stream] = max(end, offset + len(data))
        return pieces


def live_bytes(queue, job_id: str, attempt: int) -> dict:
    """The live output of an attempt so far, per stream, as bytes (the middle the cap dropped: a marker)."""
    text = {name: bytearray() for name in STREAMS}
    if supported(queue.store):
        for stream, data in Assembler().feed(queue.store.output_chunks(job_id, attempt, 0)):
            text[stream] += data
    return {name: bytes(data) for name, data in text.items()}


def running_attempt(queue, job, with_output: bool = True) -> Optional[dict]:
    """The running attempt of ``job`` as a logs entry (``running`` true, output so far, or none at all
    without ``with_output``), or None."""
    if job.state != models.PROCESSING or job.lease is None:
        return None
    text = live_bytes(queue, job.id, job.attempts) if with_output else {name: b"" for name in STREAMS}
    lease, now = job.lease, models.now()
    started = lease.started_at or now
    return {"job_id": job.id, "attempt": job.attempts, "outcome": "running", "exit_code": None, "signal": None,
            "error": None, "stdout": text["stdout"].decode("utf-8", "replace"),
            "stderr": text["stderr"].decode("utf-8", "replace"), "duration": round(max(0.0, now - started), 6),
            "created_at": models.iso(started), "finished_at": None, "worker": lease.owner, "host": lease.host,
            "pid": lease.pid, "running": True}


def follow(queue, job_id: str) -> Iterator[tuple]:
    """Events of a job's output until it is terminal, from its first attempt on.

    ``("attempt", n, entry)`` starts attempt n (``entry``: its logs entry, None while it runs);
    ``("output", stream, bytes)``; ``("ended", n, entry)`` after an attempt; ``("done", job)`` last
    (state ``purged`` for a job deleted meanwhile). ``job_id`` is a whole id (Queue.follow resolves it).
    """
    store = queue.store
    live = supported(store)
    listener = store.output_listener() if live else None
    number, assembler, announced = 1, Assembler(), False
    try:
        while True:
            job = current(queue, job_id)
            running = job.state == models.PROCESSING and job.attempts == number
            if running and not announced:
                yield ("attempt", number, None)
                announced = True
            if running and live:
                yield from _output(assembler.feed(store.output_chunks(job_id, number, assembler.cursor)))
            if job.attempts >= number and not running:
                yield from _finished(queue, job_id, number, assembler, announced)
                number, assembler, announced = number + 1, Assembler(), False
                continue                             # the next attempt may be over already
            if job.state in models.FINISHED_STATES or job.state == PURGED:
                yield ("done", job)
                return
            _sleep(listener)
    finally:
        if listener is not None:
            listener.close()


def _finished(queue, job_id: str, number: int, assembler: Assembler, announced: bool) -> Iterator[tuple]:
    """The rest of a finished attempt: from its chunks when it was followed live, else from its record."""
    found = queue.store.attempts(job_id, number)
    entry = found[0].to_dict() if found else None
    if not announced:
        yield ("attempt", number, entry)
    if assembler.cursor and supported(queue.store):
        yield from _output(assembler.feed(queue.store.output_chunks(job_id, number, assembler.cursor)))
    elif found:
        yield from _output([(name, getattr(found[0], name)) for name in STREAMS])
    yield ("ended", number, entry)


def _output(pieces) -> Iterator[tuple]:
    for stream, data in pieces:
        if data:
            yield ("output", stream, data)


def _sleep(listener) -> None:
    if listener is None:
        time.sleep(POLL)
        return
    ready, _, _ = select.select([listener], [], [], WAKE_POLL)
    if ready:
        listener.drain()
