"""Showing text that came from jobs (commands, output, errors, file names) on a terminal.

A job's output may hold escape sequences that set the window title, write the clipboard (OSC 52)
or clear the screen. On a terminal every control character except newline and tab is shown as a
visible escape (``\\x1b``); piped or redirected output is left exactly as it is, so
``queuectl logs ID > file`` stays byte-exact. ``--raw`` on a terminal asks for the bytes as they are.
"""
from __future__ import annotations

import re
import sys
from typing import Optional, TextIO

from ._lazy import LazyPattern

__all__ = ["is_terminal", "escape_controls", "for_terminal", "write_output"]

# C0 controls but tab and newline, DEL, the C1 range (which some terminals obey as CSI/OSC), and the
# bidirectional embeddings, overrides and isolates and the line and paragraph separators, with which a
# text can show itself in another order than it runs ("Trojan Source", CVE-2021-42574). Compiled at
# its first use: the class over these ranges costs more to compile than most commands spend printing.
_CONTROLS = LazyPattern("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069]")


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """Every control character but newline and tab as a visible ``\\xNN`` (``\\u202e`` above U+00FF)."""
    return _CONTROLS.sub(_escape, text)


def for_terminal(text: str, stream: Optional[TextIO] = None, raw: bool = False) -> str:
    """``text`` escaped when it goes to a terminal (unless ``raw``), as it is otherwise."""
    if raw or not text or not is_terminal(stream):
        return text
    return escape_controls(text)


def write_output(data: bytes, stream: Optional[TextIO] = None, raw: bool = False) -> None:
    """A job's stored output: the exact bytes into a pipe or file (even if not UTF-8), escaped text
    on a terminal (unless ``raw``). A newline is added when the output does not end with one."""
    stream = sys.stdout if stream is None else stream
    end = b"" if data.endswith(b"\n") else b"\n"
    if raw or not is_terminal(stream):
        stream.flush()
        target = getattr(stream, "buffer", None)
        if target is not None:
            target.write(data + end)
            target.flush()
            return
    stream.write(for_terminal((data + end).decode("utf-8", "replace"), stream, raw))
    stream.flush()
