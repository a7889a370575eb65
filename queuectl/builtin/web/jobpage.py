"""The one-job page's data, bounded whatever the job printed and however often it ran.

A job may run up to 1001 times (more after DLQ retries) and each attempt keeps up to ``output-cap``
per stream, so the page never carries every attempt's output: it lists the newest ROWS attempts
without their output (their sizes instead) and shows one attempt's output at a time, at most
HEAD + TAIL bytes per stream (the first HEAD and the last TAIL bytes, with how many lie between;
``queuectl logs ID --attempt N`` prints it whole). A running attempt is refreshed from the live
chunks stored after the page's cursor, so each refresh carries only what was printed since.
Everything here goes through the Queue facade.
"""
from __future__ import annotations

from typing import Optional

from queuectl import models
from queuectl.errors import UsageError
from queuectl.output import STREAMS, Assembler

HEAD = 16 * 1024          # bytes of the start of a stream shown
TAIL = 48 * 1024          # bytes of its end shown (a failure says why at the end)
ROWS = 100                # attempts listed per page, newest first


def whole_number(value: Optional[str], what: str, low: int = 1) -> Optional[int]:
    """A number from the address: ASCII digits only (int() would also take '１' or '1_0'), low..2^63-1."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 20) or not low <= int(value) <= models.INT64_MAX:
        raise UsageError(f"{what} must be an integer from {low} to {models.INT64_MAX}, got {models.shown(value)}")
    return int(value)


def job_data(queue, job_id: str, after: int = 0, before: Optional[int] = None) -> dict:
    """The job's fields and its attempts after ``after`` (the newest ROWS of them), without output."""
    job = queue.get(job_id)
    attempts = queue.attempt_list(job.id, after=after, before=before, limit=ROWS)
    finished = [a["attempt"] for a in attempts if not a["running"]]
    return {"job": job.to_dict(), "attempts": attempts,
            "earlier": min(finished) if finished and min(finished) > after + 1 else None}


def attempt_output(queue, job_id: str, number: int, after: Optional[int] = None,
                   ends: Optional[dict] = None) -> dict:
    """Attempt ``number``'s fields and output, clipped to HEAD + TAIL bytes per stream.

    Running, its output comes from the live chunks with a ``cursor``; given ``after`` (a cursor) and
    ``ends`` (bytes of each stream the page has), only what was stored since, at most TAIL bytes per
    stream (``skipped``: bytes left out before it). Ended (``running`` false), it is the stored record,
    ``after`` or not: the page then replaces what it showed."""
    job = queue.get(job_id)
    if job.state == models.PROCESSING and job.attempts == number:
        return running_output(queue, job.id, number, after, ends or {})
    record = queue.attempts(job.id, number)[0]
    entry = {k: v for k, v in record.to_dict().items() if k not in STREAMS}
    return {"attempt": dict(entry, running=False), "running": False,
            **{name: clip(getattr(record, name)) for name in STREAMS}}


def running_output(queue, job_id: str, number: int, after: Optional[int], ends: dict) -> dict:
    assembler = Assembler()
    assembler.cursor = after or 0
    if after is not None:
        assembler.ends.update(ends)
    chunks, cursor = queue.output_since(job_id, number, assembler.cursor)
    pieces = {name: bytearray() for name in STREAMS}
    for stream, data in assembler.feed([(cursor, c["stream"], c["offset"], c["data"]) for c in chunks]):
        pieces[stream] += data
    running = [a for a in queue.attempt_list(job_id, after=number - 1, limit=0) if a["attempt"] == number]
    result = {"attempt": running[0] if running else None, "running": True, "cursor": cursor}
    for name in STREAMS:
        data = bytes(pieces[name])
        if after is None:
            result[name] = dict(clip(data), end=assembler.ends[name])
        else:
            start = boundary(data, max(0, len(data) - TAIL))
            result[name] = {"append": text(data[start:]), "skipped": start, "end": assembler.ends[name]}
    return result


def clip(data: bytes) -> dict:
    """An output for the page: whole when it fits in HEAD + TAIL bytes, else its head and tail and how
    many bytes lie between them (cut at character boundaries)."""
    if len(data) <= HEAD + TAIL:
        return {"head": text(data), "tail": "", "dropped": 0, "bytes": len(data)}
    head_end, tail_start = boundary(data, HEAD), boundary(data, len(data) - TAIL)
    return {"head": text(data[:head_end]), "tail": text(data[tail_start:]), "dropped": tail_start - head_end,
            "bytes": len(data)}


def boundary(data: bytes, at: int) -> int:
    """``at`` moved back to the start of a UTF-8 character (at most 3 bytes back: others are not UTF-8)."""
    start = at
    while 0 < at < len(data) and start - at < 3 and data[at] & 0xC0 == 0x80:
        at -= 1
    return at if at < len(data) and data[at] & 0xC0 != 0x80 else start


def text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
