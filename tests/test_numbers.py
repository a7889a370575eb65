"""Numbers typed by a user (options, settings, environment variables, job fields given as text) are
ASCII decimal: one reader, models.number_text, behind every range check, and the duration and exit-code
readers the same way. Python's int() and float() also take other scripts' digits ("٣", "３"), "1_000",
"inf" and "nan"; none of those reaches a job."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from queuectl.builtin.backoff import exit_codes
from queuectl.config import between, seconds
from queuectl.models import RANGES, number_text, parse_duration

NON_ASCII_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())
SPACE = st.sampled_from(["", " ", "\t", "  "])


@given(st.integers(-10**30, 10**30), SPACE, SPACE, st.booleans())
def test_ascii_integers_are_read_with_a_sign_and_spaces_around(n, before, after, plus):
    text = before + ("+" if plus and n >= 0 else "") + str(n) + after
    assert number_text(text) == n and number_text(text, integer=False) == float(n)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_ascii_floats_are_read_as_python_writes_them(x):
    assert number_text(repr(x), integer=False) == x


@given(st.text(max_size=12))
def test_anything_read_is_ascii_decimal_and_what_int_or_float_reads(text):
    for integer in (True, False):
        try:
            value = number_text(text, integer)
        except ValueError:
            continue
        core = text.strip()
        assert core.isascii() and "_" not in core and core.lower() not in ("inf", "nan", "infinity")
        assert value == (int(core) if integer else float(core))


@given(st.lists(st.sampled_from("0123456789"), min_size=0, max_size=3), NON_ASCII_DIGITS,
       st.lists(st.sampled_from("0123456789"), max_size=3))
def test_another_scripts_digit_anywhere_is_refused_by_every_reader(head, digit, tail):
    text = "".join(head) + digit + "".join(tail)
    readers = [lambda t: number_text(t), lambda t: number_text(t, integer=False), RANGES["max_retries"].check,
               RANGES["priority"].check, between(0, 10**9), seconds(), parse_duration, lambda t: parse_duration(t + "s"),
               exit_codes, lambda t: exit_codes("1," + t)]
    for read in readers:
        with pytest.raises(ValueError):
            read(text)


@pytest.mark.parametrize("text", ["1_0", "1_000", "inf", "-inf", "nan", "Infinity", "0x10", "1e3"])
def test_python_only_spellings_are_refused_for_integers(text):
    with pytest.raises(ValueError):
        RANGES["max_retries"].check(text)
    with pytest.raises(ValueError):
        exit_codes(text)


@pytest.mark.parametrize("text", ["1_0.5", "inf", "nan", "Infinity", "0x10", "1_0s"])
def test_python_only_spellings_are_refused_for_numbers_and_durations(text):
    with pytest.raises(ValueError):
        RANGES["backoff_base"].check(text)
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_job_and_the_command_line_refuse_them_with_one_line(instance):
    """Through the CLI: an option, a JSON job's field given as text, a setting from the environment."""
    cases = [
        (["enqueue", "--max-retries", "٣", "true"], {}, "--max-retries"),
        (["enqueue", "--timeout", "１０s", "true"], {}, "not a duration"),
        (["enqueue", "--retry-on", "٧٥", "true"], {}, "not an exit code"),
        (["enqueue", json.dumps({"command": "true", "max_retries": "1_0"})], {}, "max_retries must be an integer"),
        (["enqueue", json.dumps({"command": "true", "priority": "٥"})], {}, "priority must be an integer"),
        (["config", "get", "max-retries"], {"QUEUECTL_MAX_RETRIES": "٣"}, "QUEUECTL_MAX_RETRIES"),
    ]
    instance.run("init")
    for args, env, message in cases:
        code, out, err = instance.cli(*args, env=env)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, (args, code, out, err)
    assert instance.cli_json("list") == []
    code, out, _ = instance.cli("enqueue", "--max-retries", " +3 ", "--timeout", "1.5m", "--retry-on", "75, 69", "true")
    job = instance.job(out.strip())
    assert code == 0 and (job["max_retries"], job["timeout"], job["retry_on"]) == (3, 90, [75, 69])
