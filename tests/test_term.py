"""Control characters from jobs are escaped on a terminal and left alone in pipes."""
import io
import os
import pty

from queuectl.term import escape_controls, for_terminal, is_terminal

HOSTILE = "title\x1b]0;pwned\x07 clip\x1b]52;c;aGk=\x07 clear\x1b[2J c1\x9b31m bell\x07 del\x7f"


def test_escape_controls_leaves_newline_and_tab():
    assert escape_controls("a\tb\nc") == "a\tb\nc"
    out = escape_controls(HOSTILE)
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\x7f" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x9b31m" in out


def test_for_terminal_escapes_only_on_a_tty():
    assert for_terminal(HOSTILE, io.StringIO()) == HOSTILE
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert is_terminal(tty)
            assert "\x1b" not in for_terminal(HOSTILE, tty)
            assert for_terminal(HOSTILE, tty, raw=True) == HOSTILE
    finally:
        os.close(leader)
        os.close(follower)
