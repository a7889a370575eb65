"""/metrics and `queuectl metrics`: the queue in Prometheus text format, through prometheus-client.

Every figure comes from counters the store keeps current (jobs per queue and state, run totals,
the duration histogram) or from an index seek per queue (the oldest pending job), so a scrape
costs the same at a thousand jobs as at a million.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from queuectl.builtin._rows import HIST_STEPS
from queuectl.models import STATES

#: Upper bounds of the exported duration histogram, in seconds. The store's own histogram is finer
#: (4 buckets per doubling); each of its buckets is counted under the first bound its upper edge fits.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _upper_edge(index: int) -> float:
    return 2 ** ((index + 1) / HIST_STEPS) / 1e6


def histogram_buckets(rows, total: int) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs from the store's (bucket, n) rows, ending with +Inf."""
    out, seen, rows = [], 0, sorted(rows)
    position = 0
    for bound in BOUNDS:
        while position < len(rows) and _upper_edge(rows[position][0]) <= bound * 1.0001:
            seen += int(rows[position][1])
            position += 1
        out.append((repr(float(bound)), seen))
    out.append(("+Inf", total))
    return out


class QueueCollector:
    """Reads the queue at every scrape; registered in a private registry (no process metrics)."""

    def __init__(self, queue):
        self.queue = queue

    def collect(self):
        queue = self.queue
        jobs = GaugeMetricFamily("queuectl_jobs", "Jobs by queue and state.", labels=["queue", "state"])
        for name, states in sorted(queue.queue_counts().items()):
            for state in STATES:
                jobs.add_metric([name, state], states.get(state, 0))
        yield jobs
        totals = queue.run_totals()
        yield CounterMetricFamily("queuectl_attempts", "Attempts finished, of every outcome.", value=totals["runs"])
        yield CounterMetricFamily("queuectl_attempt_failures", "Attempts that did not succeed.",
                                  value=totals["failed"])
        yield HistogramMetricFamily("queuectl_attempt_duration_seconds", "Duration of finished attempts.",
                                    buckets=histogram_buckets(totals["histogram"], totals["runs"]),
                                    sum_value=totals["duration_sum"])
        age = GaugeMetricFamily("queuectl_oldest_pending_age_seconds",
                                "Seconds since the earliest-enqueued pending job of each queue was enqueued.",
                                labels=["queue"])
        for name, seconds in sorted(queue.oldest_pending().items()):
            age.add_metric([name], seconds)
        yield age
        workers = GaugeMetricFamily("queuectl_workers", "Worker processes registered, per host.", labels=["host"])
        per_host: dict = {}
        for row in queue.live_workers():
            if row["kind"] == "worker":
                per_host[row["host"]] = per_host.get(row["host"], 0) + 1
        for host, n in sorted(per_host.items()):
            workers.add_metric([host], n)
        yield workers


def render(queue) -> bytes:
    """The Prometheus text exposition of ``queue``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue))
    return generate_latest(registry)
