"""How queuectl looks on a screen: terminal width, colors, human durations and times.

Every command, the core's and plugins', renders through these (by way of ``queuectl.command``),
so a table, a state or a time looks the same everywhere:

- On a terminal tables fit its width (long texts end in ``…``), states are in color, times are
  local and relative (``2m ago``, ``in 5m``). Piped or redirected output is plain: no color,
  no fitting, times in ISO-8601 UTC, so a script reading it gets the same text every time.
- ``--color auto|always|never`` (or ``QUEUECTL_COLOR``) chooses color; ``auto`` is color on a
  terminal unless ``NO_COLOR`` is set (https://no-color.org); ``always`` is color even in a pipe.
- ``--json`` never goes through here: JSON keeps full values and ISO-8601 UTC times.
"""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Callable, Iterable, Optional, TextIO

from .term import escape_controls, is_terminal

__all__ = ["COLOR_MODES", "set_color_mode", "use_color", "paint", "state_text", "terminal_width", "fit",
           "cell_width", "human_duration", "relative_time", "local_time", "when", "format_table"]

COLOR_MODES = ("auto", "always", "never")
_mode: Optional[str] = None

# SGR codes per state: green done, red dead, yellow failed (a retry is due), cyan running.
STATE_COLORS = {"pending": "", "processing": "36", "completed": "32", "failed": "33", "dead": "31;1",
                "cancelled": "2", "cancelling": "2"}
#: Columns that shrink when a table is wider than the terminal, with the width each keeps at least:
#: free texts first, then ids (a cut id is still a prefix that every command takes).
FLEX_COLUMNS = {"command": 12, "last_error": 8, "error": 8, "labels": 8, "value": 12, "job": 10, "id": 10}
FIRST_TIER = ("command", "last_error", "error", "labels", "value")
SECOND_TIER = ("id", "job")
#: Optional columns left out, in this order, when even the shrunk table is too wide.
DROP_ORDER = ("due", "queue", "labels", "started", "host", "error", "last_error")
#: Before any of that, the command keeps a readable width: the optional columns (errors first, which
#: `show` has whole) give way until it has COMFORT columns and ids are whole; only when even that
#: does not fit does the command shrink toward its floor above.
COMFORT = {"command": 20}
COMFORT_DROP_ORDER = ("due", "queue", "started", "host", "error", "last_error", "labels")
MIN_CUT = 4             # the fewest columns a free text or an id is cut to on a very narrow terminal
PIPE_TEXT_MAX = 120     # a free text in a pipe is cut here too, so that one row stays one line


def set_color_mode(mode: Optional[str]) -> None:
    """The --color choice of this invocation (None: $QUEUECTL_COLOR, else auto)."""
    global _mode
    _mode = mode


def use_color(stream: Optional[TextIO] = None) -> bool:
    mode = _mode or os.environ.get("QUEUECTL_COLOR", "auto").lower()
    if mode == "always":
        return True
    if mode == "never":
        return False
    return is_terminal(stream) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(text: str, code: str, stream: Optional[TextIO] = None) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if code and text and use_color(stream) else text


def state_text(state: str, stream: Optional[TextIO] = None) -> str:
    return paint(state, STATE_COLORS.get(state, ""), stream)


def terminal_width(stream: Optional[TextIO] = None) -> Optional[int]:
    """Columns of the terminal that ``stream`` is, else None (a pipe is never fitted).

    The terminal's own size wins over $COLUMNS, which is often a stale value exported before the
    window was resized; $COLUMNS counts only for a terminal that does not know its size (0 columns).
    """
    stream = sys.stdout if stream is None else stream
    if not is_terminal(stream):
        return None
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    if columns <= 0:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
    return columns if columns > 0 else None


def cell_width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide characters take two; combining and enclosing
    marks and format characters (zero-width space and joiner, variation selectors) none."""
    if text.isascii():
        return len(text)
    import unicodedata      # only for text that is not ASCII

    return sum(0 if unicodedata.category(c) in _ZERO_WIDTH else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


_ZERO_WIDTH = ("Mn", "Me", "Cf")


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ending in … when cut."""
    if cell_width(text) <= width:
        return text
    out, used = [], 0
    for char in text:
        w = cell_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…" if width > 0 else ""


def _pad(text: str, width: int) -> str:
    return text + " " * (width - cell_width(text))


# --- durations and times ------------------------------------------------------------------------


def human_duration(seconds: Optional[float]) -> str:
    """1.2s, 45ms, 3m04s, 2h05m, 3d04h; '-' for none."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size}{unit}{(whole % size) // sub_size:02d}{sub}"
    return f"{whole}s"


def _short_span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def relative_time(ts: Optional[float], now: Optional[float] = None) -> str:
    """'2m ago', 'in 5m', 'now'."""
    if ts is None:
        return "-"
    delta = ts - (time.time() if now is None else now)
    if abs(delta) < 1:
        return "now"
    return f"in {_short_span(delta)}" if delta > 0 else f"{_short_span(-delta)} ago"


def local_time(ts: Optional[float]) -> str:
    """Local wall-clock time with its zone: 2026-12-01 23:04:05 CET."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def when(ts: Optional[float], stream: Optional[TextIO] = None, exact: bool = False) -> str:
    """A time for people: relative on a terminal (``exact``: local time and relative), ISO UTC elsewhere."""
    if ts is None:
        return "-"
    if not is_terminal(stream):
        from .models import iso

        return iso(ts)
    return f"{local_time(ts)} ({relative_time(ts)})" if exact else relative_time(ts)


# --- tables ---------------------------------------------------------------------------------------


def _cell(value, terminal: bool) -> str:
    """One line of text for a cell; job text is escaped on a terminal (queuectl.term's for_terminal,
    with the stream asked once per table rather than once per cell)."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return escape_controls(text) if terminal and text else text


def _widths(rows: list[dict], columns: list[str], limit: Optional[int], flex: dict) -> dict:
    """Natural widths; to fit ``limit``, the first of these layouts that fits: free texts shrunk to
    their COMFORT widths with ids whole, leaving out the optional columns of COMFORT_DROP_ORDER one by
    one; then free texts shrunk (widest first, down to their floor); then without the optional columns
    of DROP_ORDER, ids shrunk too; then without other columns, from the right (the first column and the
    free texts stay, so a narrow terminal still shows what each job runs); last, free texts and ids
    below their floors, then columns from the right."""
    natural = {c: max([cell_width(c)] + [cell_width(r[c]) for r in rows]) for c in columns}
    if limit is None:
        return natural
    widths = natural
    for kept, tiers, floors in _layouts(columns, flex):
        widths = {c: natural[c] for c in columns if c in kept}
        for tier in tiers:          # free texts to their floors before an id is cut
            _shrink(widths, {c: floors[c] for c in widths if c in floors and c in tier}, limit)
        if _excess(widths, limit) <= 0:
            return widths
    _shrink(widths, {c: MIN_CUT for c in widths if c in flex}, limit)
    while _excess(widths, limit) > 0 and len(widths) > 1:
        del widths[list(widths)[-1]]
    if _excess(widths, limit) > 0:
        widths = {c: max(1, limit) for c in widths}
    return widths


def _layouts(columns: list[str], flex: dict):
    """(columns kept, tiers of columns that may shrink, their floors) to try in turn, from the whole
    table down."""
    comfort = {c: max(floor, COMFORT.get(c, 0)) for c, floor in flex.items()}
    kept = list(columns)
    yield kept, (FIRST_TIER,), comfort          # the command kept readable, ids whole
    for column in COMFORT_DROP_ORDER:
        if column in kept:
            kept = [c for c in kept if c != column]
            yield kept, (FIRST_TIER,), comfort
    kept = list(columns)
    yield kept, (FIRST_TIER,), flex
    kept = [c for c in kept if c not in DROP_ORDER[:2]]
    yield kept, (FIRST_TIER,), flex
    both = (FIRST_TIER, SECOND_TIER)
    yield kept, both, flex
    for column in DROP_ORDER[2:]:
        if column in kept:
            kept = [c for c in kept if c != column]
            yield kept, both, flex
    for column in reversed(kept[1:]):
        if column not in flex:
            kept = [c for c in kept if c != column]
            yield kept, both, flex


def _excess(widths: dict, limit: int) -> int:
    return sum(widths.values()) + 2 * (len(widths) - 1) - limit


def _shrink(widths: dict, floors: dict, limit: int) -> None:
    """Narrow the columns of ``floors`` (widest first, never below their floor) until ``widths`` fit."""
    shrinkable = list(floors)
    while _excess(widths, limit) > 0 and shrinkable:
        widest = max(shrinkable, key=lambda c: widths[c])
        if widths[widest] <= floors[widest]:
            shrinkable.remove(widest)
            continue
        second = max([widths[c] for c in shrinkable if c != widest] + [floors[widest]])
        widths[widest] -= max(1, min(_excess(widths, limit), widths[widest] - second))


def format_table(rows: Iterable[dict], columns: list[str], stream: Optional[TextIO] = None,
                 flex: Optional[dict] = None, styles: Optional[dict[str, Callable[[str], str]]] = None
                 ) -> list[str]:
    """The lines of a table: fitted and colored on a terminal, plain in a pipe.

    A column named ``state`` is colored by its value; ``styles`` maps other columns to a
    function from the cell's text to an SGR code. Every cell is escaped on a terminal.
    """
    limit = terminal_width(stream)
    flex = FLEX_COLUMNS if flex is None else flex
    terminal = is_terminal(stream)
    cells = [{c: _cell(r.get(c), terminal) for c in columns} for r in rows]
    if limit is None:
        for row in cells:
            for c in columns:
                if c in FIRST_TIER:
                    row[c] = fit(row[c], PIPE_TEXT_MAX)
    widths = _widths(cells, columns, limit, flex)
    columns = [c for c in columns if c in widths]
    styles = dict({"state": lambda v: STATE_COLORS.get(v, "")}, **(styles or {}))
    lines = ["  ".join(_pad(fit(c.upper(), widths[c]), widths[c]) for c in columns).rstrip()]
    for row in cells:
        parts = []
        for c in columns:
            text = fit(row[c], widths[c])
            style = styles.get(c)
            shown = paint(text, style(row[c]), stream) if style else text
            parts.append(shown + " " * (widths[c] - cell_width(text)))
        lines.append("  ".join(parts).rstrip())
    return lines


def wrap_items(lead: str, items: list[str], stream: Optional[TextIO] = None) -> str:
    """``lead`` then ``items`` two spaces apart, on lines of the terminal's width (continued under the
    first item); one line in a pipe. Items may be colored: their width is counted without SGR codes."""
    limit, indent = terminal_width(stream), cell_width(lead)
    lines, line, used = [], lead, indent
    for item in items:
        width = cell_width(_SGR.sub("", item))
        if used > indent and limit is not None and used + 2 + width > limit:
            lines.append(line)
            line, used = " " * indent, indent
        gap = "  " if used > indent else ""
        line, used = line + gap + item, used + len(gap) + width
    return "\n".join(lines + [line])


_SGR = re.compile("\x1b\\[[0-9;]*m")


# --- diagnostics --------------------------------------------------------------------------------


def setup_logging(timestamps: bool) -> None:
    """Diagnostics of a pool (and the workers it forks) through stdlib logging, to stderr;
    with ``timestamps`` (``worker start -v``) each line starts with the local time."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s.%(msecs)03d queuectl: %(message)s" if timestamps else "queuectl: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("queuectl")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def log(message: str, component: Optional[str] = None) -> None:
    """One diagnostic line on stderr: through logging once a pool set it up, else printed. A line that
    cannot be written (the terminal was closed: EIO; stderr closed or full) is dropped: what happened is
    in the store, and a pool must go on stopping or running its jobs, not fail on its own message."""
    text = f"{component}: {message}" if component else message
    logging = sys.modules.get("logging")       # imported by setup_logging only: commands never pay for it
    logger = logging.getLogger("queuectl") if logging else None
    try:
        if logger is not None and logger.handlers:
            logger.info(text)
            for handler in logger.handlers:
                handler.flush()
        else:
            print(f"queuectl: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
