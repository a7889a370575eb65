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

__all__ = ["is_terminal", "escape_controls", "for_terminal"]

# C0 controls but tab and newline, DEL, and the C1 range (which some terminals obey as CSI/OSC).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def is_terminal(stream: Optional[TextIO] = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _escape(match: "re.Match[str]") -> str:
    return f"\\x{ord(match.group()):02x}"


def escape_controls(text: str) -> str:
    """Every control character but newline and tab as a visible ``\\xNN``."""
    return _CONTROLS.sub(_escape, text)


def for_terminal(text: str, stream: Optional[TextIO] = None, raw: bool = False) -> str:
    """``text`` escaped when it goes to a terminal (unless ``raw``), as it is otherwise."""
    if raw or not text or not is_terminal(stream):
        return text
    return escape_controls(text)
