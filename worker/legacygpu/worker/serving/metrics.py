"""The worker's real-time serving metrics, named the way Triton users read them.

Triton's ``nv_inference_*`` families under the ``legacygpu_`` namespace and in
base units (seconds, histograms rather than cumulative microseconds), each
labelled with the ``model``:

* ``legacygpu_inference_request_success_total`` / ``..._failure_total{reason}``:
  requests answered with a result / refused or failed.
* ``legacygpu_inference_count_total`` (batch items inferred) against
  ``legacygpu_inference_exec_count_total`` (model executions): with dynamic
  batching the first grows faster than the second.
* ``legacygpu_inference_queue_duration_seconds``, ``..._compute_input_duration_seconds``
  (joining a batch), ``..._compute_infer_duration_seconds`` (the model),
  ``..._compute_output_duration_seconds`` (splitting it back): per request.
* ``legacygpu_inference_pending_request_count``: requests waiting in the queue.

Each :class:`ServingMetrics` has its own registry, so several servers in one
process (tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "ServingMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServingMetrics:
    """Counters and histograms of one serving engine."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.success = Counter(
            "legacygpu_inference_request_success_total", "Real-time requests answered with a result.", ["model"],
            registry=r,
        )
        self.failure = Counter(
            "legacygpu_inference_request_failure_total",
            "Real-time requests refused or failed, by reason (bad_request, queue_full, timeout, model_error).",
            ["model", "reason"],
            registry=r,
        )
        self.inference_count = Counter(
            "legacygpu_inference_count_total", "Batch items inferred (a request of batch 4 counts 4).", ["model"],
            registry=r,
        )
        self.exec_count = Counter(
            "legacygpu_inference_exec_count_total", "Model executions (one per batch run).", ["model"], registry=r
        )
        self.pending = Gauge(
            "legacygpu_inference_pending_request_count", "Requests waiting in the model's queue.", ["model"],
            registry=r,
        )

        def histogram(name: str, what: str) -> Histogram:
            return Histogram(name, what, ["model"], buckets=_BUCKETS, registry=r)

        self.queue_duration = histogram(
            "legacygpu_inference_queue_duration_seconds", "Time a request waited in the queue."
        )
        self.compute_input = histogram(
            "legacygpu_inference_compute_input_duration_seconds", "Time joining a request's batch."
        )
        self.compute_infer = histogram(
            "legacygpu_inference_compute_infer_duration_seconds", "Time the model ran on a request's batch."
        )
        self.compute_output = histogram(
            "legacygpu_inference_compute_output_duration_seconds", "Time splitting a request's outputs back out."
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
