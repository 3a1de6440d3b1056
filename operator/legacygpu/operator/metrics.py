"""The operator's Prometheus metrics, served on ``/metrics``.

Each operator instance owns a :class:`prometheus_client.CollectorRegistry`
(tests run several in one process). Names follow the Prometheus
conventions under the project's ``legacygpu_`` namespace: base units
(seconds), ``_total`` for counters, no unit suffix on plain gauges.

=============================================  =========  =====================================
name                                           type       labels
=============================================  =========  =====================================
legacygpu_operator_reconcile_duration_seconds  histogram  kind (InferenceCluster/InferenceTask)
legacygpu_operator_reconcile_errors_total      counter    kind
legacygpu_operator_tasks                       gauge      namespace, cluster, phase
legacygpu_operator_queue_depth                 gauge      namespace, cluster
legacygpu_operator_task_assignment_seconds     histogram  (creation to first assignment)
legacygpu_operator_task_transitions_total      counter    phase, reason (writes by the operator)
legacygpu_operator_workers                     gauge      namespace, cluster, state (ready/not_ready)
legacygpu_operator_leader                      gauge      (1 while this replica leads)
legacygpu_operator_task_watch_restarts_total   counter    reason (expired/list_failed/watch_failed)
=============================================  =========  =====================================
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from legacygpu.core.tasks import Phase

__all__ = ["OperatorMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class OperatorMetrics:
    """All the operator's metrics in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "legacygpu_operator_reconcile_duration_seconds",
            "Time one reconcile pass took.",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reconcile_errors = Counter(
            "legacygpu_operator_reconcile_errors_total",
            "Reconcile passes that raised an error or had a create refused by the API server.",
            ["kind"],
            registry=r,
        )
        self.tasks = Gauge(
            "legacygpu_operator_tasks", "InferenceTasks by phase.", ["namespace", "cluster", "phase"], registry=r
        )
        self.queue_depth = Gauge(
            "legacygpu_operator_queue_depth",
            "Tasks waiting for a worker (Pending or Queued).",
            ["namespace", "cluster"],
            registry=r,
        )
        self.assignment = Histogram(
            "legacygpu_operator_task_assignment_seconds",
            "Time from a task's creation to its first assignment to a worker.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "legacygpu_operator_task_transitions_total",
            "Task phase changes written by the operator.",
            ["phase", "reason"],
            registry=r,
        )
        self.workers = Gauge(
            "legacygpu_operator_workers", "Worker pods by state.", ["namespace", "cluster", "state"], registry=r
        )
        self.leader = Gauge("legacygpu_operator_leader", "1 while this operator replica is the leader.", registry=r)
        self.task_watch_restarts = Counter(
            "legacygpu_operator_task_watch_restarts_total",
            "Times the operator's task watch listed again: its version expired, or a LIST or WATCH failed.",
            ["reason"],
            registry=r,
        )
        for reason in ("expired", "list_failed", "watch_failed"):
            self.task_watch_restarts.labels(reason)
        for kind in ("InferenceCluster", "InferenceTask"):  # series exist from the start, at zero
            self.reconcile_errors.labels(kind)
            self.reconcile_duration.labels(kind)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe_cluster(
        self, namespace: str, cluster: str, phases: Mapping[Phase, int], ready: int, not_ready: int
    ) -> None:
        for phase in Phase:
            self.tasks.labels(namespace, cluster, phase.value).set(phases.get(phase, 0))
        self.queue_depth.labels(namespace, cluster).set(phases.get(Phase.PENDING, 0) + phases.get(Phase.QUEUED, 0))
        self.workers.labels(namespace, cluster, "ready").set(ready)
        self.workers.labels(namespace, cluster, "not_ready").set(not_ready)

    def forget_cluster(self, namespace: str, cluster: str) -> None:
        for phase in Phase:
            self._remove(self.tasks, namespace, cluster, phase.value)
        self._remove(self.queue_depth, namespace, cluster)
        for state in ("ready", "not_ready"):
            self._remove(self.workers, namespace, cluster, state)

    @staticmethod
    def _remove(metric: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on a background thread; returns the bound port (``port=0`` picks one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    @property
    def port(self) -> int | None:
        """The port ``/metrics`` is served on, once :meth:`serve` ran."""
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
