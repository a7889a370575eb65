"""A private queuectl instance per test: config.yaml and store in a temporary folder, real pools."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

QUEUECTL = [sys.executable, "-m", "queuectl"]
FAST = "db: queue.db\npoll-interval: 0.05\nrecovery-interval: 0.1\nbackoff-scale: 0.05\nkill-grace: 1\n"


def wait_until(predicate, timeout=60.0, message="condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.05)
    return value


class Instance:
    def __init__(self, root):
        self.root = root
        (root / "config.yaml").write_text(FAST)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        self.env.update(QUEUECTL_CONFIG=str(root / "config.yaml"), PYTHONUNBUFFERED="1")
        self.pools = []

    def run(self, *args, check=True):
        proc = subprocess.run([*QUEUECTL, *args], cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=60)
        assert not check or proc.returncode == 0, f"queuectl {args} exited {proc.returncode}: {proc.stderr}"
        return proc

    def json(self, *args):
        return json.loads(self.run(*args, "--json").stdout)

    def python(self, code):
        """Run Python code in the instance's folder (as a user's script would)."""
        return subprocess.run([sys.executable, "-c", code], cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=60, check=True).stdout

    def start_pool(self, count=1):
        self.pools.append(subprocess.Popen([*QUEUECTL, "worker", "start", "--count", str(count)], cwd=self.root,
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                           start_new_session=True))

    def wait_for_state(self, job_id, *states):
        """The job's `show --json` once its state is one of ``states``.

        The wait polls the store through queuectl's Python API, in this process: a `queuectl show`
        process per poll would cost more CPU than the job under test. The real CLI confirms the end.
        """
        from queuectl import Queue

        with Queue.open(config=str(self.root / "config.yaml"), env={}) as queue:
            wait_until(lambda: queue.get(job_id).state in states, message=f"job {job_id} to reach {states}")
        job = self.json("show", job_id)
        assert job["state"] in states, job
        return job

    def cleanup(self):
        for pool in self.pools:
            if pool.poll() is None:
                os.killpg(pool.pid, signal.SIGKILL)
                pool.wait()


@pytest.fixture
def instance(tmp_path):
    inst = Instance(tmp_path)
    yield inst
    inst.cleanup()
