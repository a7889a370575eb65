"""Shared pieces of the benchmark suite: private queuectl instances, timing, /proc readers, results."""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def queuectl_command() -> list[str]:
    """What a user types: the installed console script beside this interpreter, else ``python -m queuectl``."""
    script = Path(sys.executable).with_name("queuectl")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "queuectl"]


# --- statistics -----------------------------------------------------------------------------


def median(values) -> float:
    return statistics.median(values)


def percentile(values, q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def run_forked(count: int, target: Callable[[int], Any]) -> int:
    """Run ``target(i)`` in each of ``count`` forked children at once and wait for them all; the number
    that failed (raised, or exited non-zero)."""
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                target(index)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += status != 0
    return failed


# --- a private queuectl instance ---------------------------------------------------------------


class Instance:
    """A queuectl instance in its own folder: config.yaml, store, plugins folder, caches."""

    def __init__(self, folder: Path, config: Optional[dict] = None, plugins: Optional[dict] = None):
        self.root = Path(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "config.yaml"
        self.db = self.root / "queue.db"
        self.plugins_dir = self.root / "plugins"
        self.plugins_dir.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.plugins_dir, 0o755)
        for name, source in (plugins or {}).items():
            self.add_plugin(name, source)
        self.write_config({"db": "queue.db", "plugins-dir": "plugins", **(config or {})})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
        self.env.update({"QUEUECTL_CONFIG": str(self.config_path), "XDG_DATA_HOME": str(self.root / "xdg-data"),
                         "XDG_CONFIG_HOME": str(self.root / "xdg-config"),
                         "XDG_CACHE_HOME": str(self.root / "xdg-cache")})
        self.cmd = queuectl_command()
        self._queue = None

    def write_config(self, config: dict) -> None:
        self.config = dict(config)
        # JSON is YAML: no YAML library needed to write it
        self.config_path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in self.config.items()))

    def add_plugin(self, name: str, source: str) -> None:
        path = self.plugins_dir / f"{name}.py"
        path.write_text(source)
        os.chmod(path, 0o644)

    def run(self, *args, input: Optional[str] = None, check: bool = True, stdout=subprocess.PIPE,
            env: Optional[dict] = None, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.cmd, *map(str, args)], cwd=self.root, env={**self.env, **(env or {})},
                              input=input, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"queuectl {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def time_run(self, *args, **kwargs) -> float:
        start = time.perf_counter()
        self.run(*args, stdout=subprocess.DEVNULL, **kwargs)
        return time.perf_counter() - start

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.cmd, *map(str, args)], cwd=self.root, env=self.env,
                                start_new_session=True, **kwargs)

    @property
    def queue(self):
        """The Python API on this instance (opened with the instance's config, in this process)."""
        if self._queue is None:
            from queuectl import Queue

            self._queue = Queue.open(config=str(self.config_path), env=self.env)
        return self._queue

    def close(self) -> None:
        if self._queue is not None:
            self._queue.close()
            self._queue = None

    def counts(self) -> dict:
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT state, SUM(n) FROM queue_counts GROUP BY state").fetchall())

    def reset_store(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.db}{suffix}")
            except FileNotFoundError:
                pass
        shutil.rmtree(self.root / f".{self.db.name}.wake", ignore_errors=True)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- /proc --------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM (peak RSS) and friends from /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.startswith("Vm") or key.startswith("Rss"):
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0]) * 1024
    return out


def pss(pid: int) -> Optional[int]:
    """Proportional set size (shared pages split between their users), in bytes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --- the machine ------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if commit and dirty:
            commit += "+local changes"
    except (OSError, subprocess.SubprocessError):
        pass
    import queuectl

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "python_executable": sys.executable, "sqlite": sqlite3.sqlite_version,
        "queuectl": queuectl.__version__, "queuectl_path": os.path.dirname(queuectl.__file__), "commit": commit,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "queuectl_command": " ".join(queuectl_command()),
    }


# --- results -------------------------------------------------------------------------------------------


class Results:
    """Figures as they are measured; each one knows its reference, ratio and target."""

    def __init__(self):
        self.figures: list[dict] = []
        self.notes: list[str] = []
        self.errors: list[str] = []

    def add(self, section: str, name: str, value: Optional[float], unit: str, *, reference: Optional[float] = None,
            reference_name: str = "", ratio: Optional[float] = None, target: str = "",
            met: Optional[bool] = None, detail: Optional[dict] = None) -> dict:
        figure = {"section": section, "name": name, "value": value, "unit": unit, "reference": reference,
                  "reference_name": reference_name, "ratio": ratio, "target": target, "met": met,
                  "detail": detail or {}}
        self.figures.append(figure)
        print(f"  {name}: {fmt(value, unit)}" + (f"  (ref {fmt(reference, unit)} {reference_name})"
                                                 if reference is not None else "")
              + (f"  ratio {ratio:.2f}" if ratio is not None else "")
              + (f"  [{target}: {'met' if met else 'MISSED'}]" if met is not None else ""), flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "nan"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit in ("jobs/s", "runs/s"):
        return f"{value:,.0f} {unit}"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"
    if unit == "us":
        return f"{value:.0f} µs"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:g} {unit}".strip()


def render_table(results: Results) -> str:
    header = ("section", "figure", "value", "reference", "ratio", "target", "result")
    rows = []
    for f in results.figures:
        result = "-" if f["met"] is None else ("met" if f["met"] else "MISSED")
        ref = "" if f["reference"] is None else f"{fmt(f['reference'], f['unit'])} {f['reference_name']}".strip()
        rows.append((f["section"], f["name"], fmt(f["value"], f["unit"]), ref,
                     "" if f["ratio"] is None else f"{f['ratio']:.2f}", f["target"], result))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def render_markdown(results: Results) -> str:
    lines = ["| section | figure | value | reference | ratio | target | result |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in results.figures:
        result = "-" if f["met"] is None else ("met" if f["met"] else "**missed**")
        ref = "" if f["reference"] is None else f"{fmt(f['reference'], f['unit'])} {f['reference_name']}".strip()
        lines.append(f"| {f['section']} | {f['name']} | {fmt(f['value'], f['unit'])} | {ref} | "
                     f"{'' if f['ratio'] is None else format(f['ratio'], '.2f')} | {f['target']} | {result} |")
    return "\n".join(lines)
