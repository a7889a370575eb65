"""Output caps: a job printing 200 MB keeps running, the store stays small, the worker's memory bounded."""
from __future__ import annotations

import json
import os
import signal
import subprocess

from conftest import FAST_CONFIG, QUEUECTL, wait_until

MB = 1024 * 1024


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_200mb_of_output_is_capped_head_and_tail(instance):
    cap = 1048576                                     # the default output-cap
    size = 200_000_000
    job_id = instance.enqueue(
        f"printf 'first line \\377\\n'; yes 'queuectl output line' | head -c {size}; "
        f"printf '\\nlast line \\376\\n'; printf 'to stderr \\200\\n' >&2; echo still running > marker")
    from queuectl import Queue

    pool = instance.start_pool(1)
    queue = Queue.open(config=str(instance.config_path), env={})
    try:
        worker = wait_until(lambda: (lambda ws: ws[0]["pid"] if ws else None)(
            [w for w in queue.workers() if w["kind"] == "worker"]), message="a worker")
        instance.wait_for_state(job_id, "completed", timeout=120)
        peak_mb = vm_kb(worker, "VmHWM") / 1024          # the worker still runs: its lifetime peak
        assert (instance.root / "marker").read_text() == "still running\n", "the job ran to its end"
        attempt = queue.attempts(job_id)[0]
        out = attempt.stdout
        total = len("first line \xff\n".encode("latin-1")) + size + len("\nlast line \xfe\n".encode("latin-1"))
        assert len(out) <= cap + 100
        assert out.startswith(b"first line \xff\n")
        assert out.endswith(b"\nlast line \xfe\n")
        marker = f"[... queuectl: {total - cap // 2 * 2} bytes truncated ...]".encode()
        assert marker in out
        assert attempt.stderr == b"to stderr \x80\n"
        store = sum(os.path.getsize(instance.root / f"queue.db{suffix}") for suffix in ("", "-wal")
                    if os.path.exists(instance.root / f"queue.db{suffix}"))
        print(f"\n200 MB of output: worker peak RSS {peak_mb:.1f} MB, store {store / MB:.2f} MB, "
              f"kept {len(out)} bytes of stdout")
        assert peak_mb < 64, f"worker peak RSS {peak_mb:.1f} MB"
        assert store < 8 * MB
        # Non-UTF-8 bytes are shown, replaced, by every reader.
        shown = json.loads(instance.run("show", job_id, "--json").stdout)["history"][0]
        assert shown["stdout"].startswith("first line \ufffd\n") and shown["stderr"] == "to stderr \ufffd\n"
        # Piped, `logs` writes the stored bytes exactly (a terminal gets them escaped: test_security).
        logs = subprocess.run([*QUEUECTL, "logs", job_id], cwd=instance.root, env=instance.env,
                              capture_output=True, timeout=60).stdout
        assert b"first line \xff\n" in logs and b"last line \xfe\n" in logs and b"bytes truncated" in logs
        assert json.loads(instance.run("logs", job_id, "--json").stdout)[0]["stderr"] == "to stderr \ufffd\n"
    finally:
        queue.close()
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=60) == 0


def test_small_output_is_kept_whole(instance):
    job_id = instance.enqueue("printf 'a\\nb\\n'; printf 'e\\n' >&2")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    h = instance.job(job_id)["history"][0]
    assert (h["stdout"], h["stderr"]) == ("a\nb\n", "e\n")


def test_output_just_over_the_cap_keeps_no_more_than_the_cap(instance):
    cap = 1024
    instance.write_config(dict(FAST_CONFIG, **{"output-cap": cap}))
    job_id = instance.enqueue("head -c 1400 /dev/zero | tr '\\0' x; printf 'E%.0s' $(seq 1400) >&2")
    assert instance.start_pool(1, "--burst").wait(timeout=60) == 0
    from queuectl import Queue

    with Queue.open(config=str(instance.config_path), env={}) as queue:
        attempt = queue.attempts(job_id)[0]
    for stream, char in ((attempt.stdout, b"x"), (attempt.stderr, b"E")):
        marker = b"\n[... queuectl: 376 bytes truncated ...]\n"
        assert stream == char * 512 + marker + char * 512
