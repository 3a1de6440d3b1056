"""Prometheus metrics of the facade and the local coordinator.

Names follow the Prometheus conventions (``legacygpu_`` namespace, base
units, ``_total`` for counters) and Triton's set where one exists. Counters
and histograms are updated as tasks finish; gauges (tasks by phase, workers
by state, per-worker figures) are read from the backend at scrape time, so
they are right after a restart without replaying anything.

Each app gets its own registry, so several apps in one process (tests) do
not collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

Snapshot = Callable[[], dict[str, Any]]


class _StateCollector(Collector):
    """Gauges computed from a snapshot of the cluster at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        tasks = GaugeMetricFamily("legacygpu_tasks", "Tasks in the cluster by phase.", labels=["phase"])
        for phase, count in snap.get("tasks_by_phase", {}).items():
            tasks.add_metric([phase], count)
        yield tasks
        workers = GaugeMetricFamily("legacygpu_workers", "Workers by state.", labels=["state"])
        for state, count in snap.get("workers_by_state", {}).items():
            workers.add_metric([state], count)
        yield workers
        queue = GaugeMetricFamily("legacygpu_queue_depth", "Tasks waiting for a worker (phase Queued).")
        queue.add_metric([], snap.get("tasks_by_phase", {}).get("Queued", 0))
        yield queue
        running = GaugeMetricFamily(
            "legacygpu_worker_assigned_tasks", "Tasks scheduled to or running on a worker.", labels=["worker"]
        )
        rss = GaugeMetricFamily(
            "legacygpu_worker_memory_rss_bytes", "Resident memory of a worker process.", labels=["worker"]
        )
        device_mem = GaugeMetricFamily(
            "legacygpu_gpu_memory_total_bytes", "Memory of a worker's compute device.", labels=["worker", "device"]
        )
        for worker in snap.get("workers", []):
            if worker["state"] not in ("active", "draining"):
                continue
            running.add_metric([worker["name"]], worker["assigned"])
            if "memory_rss_bytes" in worker["stats"]:
                rss.add_metric([worker["name"]], worker["stats"]["memory_rss_bytes"])
            device = worker["device"]
            device_mem.add_metric([worker["name"], device["name"]], device["vram_mib"] * 1024 * 1024)
        yield running
        yield rss
        yield device_mem


class Metrics:
    """The facade's metrics, one registry per app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tasks_submitted = Counter(
            "legacygpu_tasks_submitted_total", "Tasks accepted, by model.", ["model"], registry=self.registry
        )
        self.tasks_finished = Counter(
            "legacygpu_tasks_finished_total",
            "Tasks that reached a terminal phase, by model and phase.",
            ["model", "phase"],
            registry=self.registry,
        )
        self.task_retries = Counter(
            "legacygpu_task_retries_total", "Attempts that were retried, by reason.", ["reason"], registry=self.registry
        )
        self.queue_duration = Histogram(
            "legacygpu_task_queue_duration_seconds",
            "Time from submission to a worker starting the task.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_duration = Histogram(
            "legacygpu_task_compute_duration_seconds",
            "Time a worker spent running the model for a task.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.task_duration = Histogram(
            "legacygpu_task_duration_seconds",
            "Time from submission to success.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "legacygpu_http_requests_total",
            "REST requests served, by method, route template and status code.",
            ["method", "route", "code"],
            registry=self.registry,
        )

    def watch(self, snapshot: Snapshot) -> None:
        """Export gauges read from ``snapshot()`` at every scrape."""
        self.registry.register(_StateCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
