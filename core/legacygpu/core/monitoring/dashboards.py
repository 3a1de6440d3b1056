"""The four Grafana dashboards: cluster overview, per model, per GPU, operator.

Design: each dashboard is a function returning Grafana JSON built with :mod:`.grafana`;
:data:`DASHBOARDS` maps file names to them, and :func:`write_all` writes
``charts/legacygpu/dashboards/<name>.json``, which the chart ships as ConfigMaps
(tests/chart checks the committed files never drift from this code).

Queries use only metric names the code exports (tests/chart checks them against the
real registries): the facade's ``legacygpu_*`` (``legacygpu/api/metrics.py``), the
operator's ``legacygpu_operator_*`` and the node agent's ``legacygpu_gpu_*``. Rates
use Grafana's ``$__rate_interval``. A live Prometheus test runs every query.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legacygpu.core.monitoring.grafana import dashboard, query_variable, stat, target, timeseries

__all__ = ["DASHBOARDS", "render", "write_all"]

RATE = "$__rate_interval"


def _quantiles(metric: str, selector: str = "", by: str = "") -> list[dict[str, Any]]:
    group = f"{by}, le" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        target(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{selector}[{RATE}])))",
               f"{prefix}p{int(q * 100)}")
        for q in (0.5, 0.99)
    ]


def cluster_overview() -> dict[str, Any]:
    panels = [
        stat("Active workers", "Workers sending heartbeats and taking tasks.",
             'sum(legacygpu_workers{state="active"})'),
        stat("Queued tasks", "Tasks waiting for a worker.", "sum(legacygpu_queue_depth)"),
        stat("Running tasks", "Tasks a worker is running now.", 'sum(legacygpu_tasks{phase="Running"})'),
        stat("Lost workers", "Workers declared lost (no heartbeat within the timeout) since the facade started.",
             'sum(legacygpu_workers{state="lost"})'),
        timeseries("Workers by state", "Registered workers by state.",
                   [target("sum by (state) (legacygpu_workers)", "{{state}}")]),
        timeseries("Tasks by phase", "Tasks in the facade's store by phase.",
                   [target("sum by (phase) (legacygpu_tasks)", "{{phase}}")]),
        timeseries("Throughput by outcome", "Tasks reaching a terminal phase per second.",
                   [target(f"sum by (phase) (rate(legacygpu_tasks_finished_total[{RATE}]))", "{{phase}}")],
                   unit="ops", stack=True),
        timeseries("Task latency", "Submission to success, all models: median and 99th percentile.",
                   _quantiles("legacygpu_task_duration_seconds"), unit="s"),
        timeseries("Failures by model", "Tasks that ended Failed, per second.",
                   [target(f'sum by (model) (rate(legacygpu_tasks_finished_total{{phase="Failed"}}[{RATE}]))',
                           "{{model}}")], unit="ops"),
        timeseries("Retries by reason", "Attempts that failed and were retried, per second, by reason.",
                   [target(f"sum by (reason) (rate(legacygpu_task_retries_total[{RATE}]))", "{{reason}}")],
                   unit="ops"),
        timeseries("Failures by reason (Kubernetes)",
                   "Tasks the operator failed per second, by reason (InvalidInput, DeadlineExceeded...); "
                   "failures a worker reports itself are in the per-task history.",
                   [target(f'sum by (reason) (rate(legacygpu_operator_task_transitions_total{{phase="Failed"}}'
                           f"[{RATE}]))", "{{reason}}")], unit="ops"),
        timeseries("HTTP requests by status", "REST requests served per second, by status code.",
                   [target(f"sum by (code) (rate(legacygpu_http_requests_total[{RATE}]))", "{{code}}")],
                   unit="reqps", stack=True),
        timeseries("Tasks per worker", "Tasks scheduled to or running on each live worker.",
                   [target("sum by (worker) (legacygpu_worker_assigned_tasks)", "{{worker}}")]),
        timeseries("Worker memory", "Resident memory of each live worker process.",
                   [target("sum by (worker) (legacygpu_worker_memory_rss_bytes)", "{{worker}}")], unit="bytes"),
    ]
    return dashboard("legacygpu-overview", "legacygpu / cluster overview",
                     "Workers, queue, throughput, latency and failures of one legacygpu facade.", panels)


def per_model() -> dict[str, Any]:
    m = '{model="$model"}'
    panels = [
        stat("Submitted", "Tasks accepted for this model per second.",
             f"sum(rate(legacygpu_tasks_submitted_total{m}[{RATE}]))", unit="ops"),
        stat("Failure ratio", "Share of finished tasks that failed.",
             f'(sum(rate(legacygpu_tasks_finished_total{{model="$model", phase="Failed"}}[{RATE}])) or vector(0))'
             f' / sum(rate(legacygpu_tasks_finished_total{{model="$model", phase=~"Succeeded|Failed"}}[{RATE}]))',
             unit="percentunit"),
        stat("Latency p99", "99th percentile of submission to success.",
             f"histogram_quantile(0.99, sum by (le) (rate(legacygpu_task_duration_seconds_bucket{m}[{RATE}])))",
             unit="s"),
        stat("Mean compute time", "Mean time a worker spent running the model for one task.",
             f"sum(rate(legacygpu_task_compute_duration_seconds_sum{m}[{RATE}]))"
             f" / sum(rate(legacygpu_task_compute_duration_seconds_count{m}[{RATE}]))", unit="s"),
        timeseries("Requests", "Tasks submitted and finished per second, by outcome.",
                   [target(f"sum(rate(legacygpu_tasks_submitted_total{m}[{RATE}]))", "submitted"),
                    target(f"sum by (phase) (rate(legacygpu_tasks_finished_total{m}[{RATE}]))", "{{phase}}")],
                   unit="ops"),
        timeseries("Latency", "Submission to success: median and 99th percentile.",
                   _quantiles("legacygpu_task_duration_seconds", m), unit="s"),
        timeseries("Queue time vs compute time",
                   "Where a task's time goes: waiting for a worker, then running on it (medians and p99).",
                   [*[{**t, "legendFormat": "queue " + t["legendFormat"]}
                      for t in _quantiles("legacygpu_task_queue_duration_seconds", m)],
                    *[{**t, "legendFormat": "compute " + t["legendFormat"]}
                      for t in _quantiles("legacygpu_task_compute_duration_seconds", m)]],
                   unit="s", width=24),
    ]
    variables = [query_variable("model", "Model", "label_values(legacygpu_tasks_submitted_total, model)")]
    return dashboard("legacygpu-model", "legacygpu / per model",
                     "Requests, outcomes and where the time goes for one model.", panels, variables)


def per_gpu() -> dict[str, Any]:
    # PCI addresses repeat from node to node: a GPU is its node agent (instance) plus its address.
    g = '{instance="$instance", gpu="$gpu"}'
    panels = [
        stat("Health", "The device plugin's verdict; Unhealthy cards are not handed to pods.",
             f"max(legacygpu_gpu_healthy{g})", mappings={"1": "Healthy", "0": "Unhealthy"}),
        stat("Utilisation", "amdgpu gpu_busy_percent.", f"max(legacygpu_gpu_busy_ratio{g})", unit="percentunit"),
        stat("Temperature", "Edge sensor.", f"max(legacygpu_gpu_temperature_celsius{g})", unit="celsius"),
        stat("Power", "Average board power.", f"max(legacygpu_gpu_power_watts{g})", unit="watt"),
        timeseries("Utilisation", "Share of time the GPU was busy.",
                   [target(f"max(legacygpu_gpu_busy_ratio{g})", "busy")], unit="percentunit"),
        timeseries("VRAM", "Video memory in use and in total.",
                   [target(f"max(legacygpu_gpu_vram_used_bytes{g})", "used"),
                    target(f"max(legacygpu_gpu_vram_total_bytes{g})", "total")], unit="bytes"),
        timeseries("Temperature", "Edge temperature (Polaris throttles near 90 °C).",
                   [target(f"max(legacygpu_gpu_temperature_celsius{g})", "edge")], unit="celsius"),
        timeseries("Power", "Average board power.", [target(f"max(legacygpu_gpu_power_watts{g})", "power")],
                   unit="watt"),
        timeseries("Clocks", "Current shader and memory clocks.",
                   [target(f"max by (clock) (legacygpu_gpu_clock_hertz{g})", "{{clock}}")], unit="hertz"),
        timeseries("Health", "1 Healthy, 0 Unhealthy; present drops to 0 when the card leaves sysfs.",
                   [target(f"max(legacygpu_gpu_healthy{g})", "healthy"),
                    target(f"max(legacygpu_gpu_present{g})", "present")]),
        timeseries("Every GPU: utilisation", "Busy share of every GPU the node agents report.",
                   [target("max by (gpu, instance) (legacygpu_gpu_busy_ratio)", "{{instance}} {{gpu}}")],
                   unit="percentunit", width=24),
    ]
    variables = [query_variable("instance", "Node agent", "label_values(legacygpu_gpu_info, instance)"),
                 query_variable("gpu", "GPU", 'label_values(legacygpu_gpu_info{instance="$instance"}, gpu)')]
    return dashboard("legacygpu-gpu", "legacygpu / per GPU",
                     "Utilisation, VRAM, temperature, power, clocks and health of one GPU (node agent, PCI address).",
                     panels, variables)


def operator() -> dict[str, Any]:
    panels = [
        stat("Leader", "Operator replicas reporting they hold the leader Lease (1 expected).",
             "sum(legacygpu_operator_leader)"),
        stat("Tasks waiting", "Pending or Queued InferenceTasks, all clusters.",
             "sum(legacygpu_operator_queue_depth)"),
        stat("Ready workers", "Ready worker pods, all clusters.", 'sum(legacygpu_operator_workers{state="ready"})'),
        stat("Reconcile errors", "Failed reconcile passes per second.",
             f"sum(rate(legacygpu_operator_reconcile_errors_total[{RATE}]))", unit="ops"),
        timeseries("Reconcile rate", "Reconcile passes per second, by kind.",
                   [target(f"sum by (kind) (rate(legacygpu_operator_reconcile_duration_seconds_count[{RATE}]))",
                           "{{kind}}")], unit="ops"),
        timeseries("Reconcile duration", "Median and 99th percentile of one pass, by kind.",
                   _quantiles("legacygpu_operator_reconcile_duration_seconds", by="kind"), unit="s"),
        timeseries("Reconcile errors", "Failed reconcile passes per second, by kind.",
                   [target(f"sum by (kind) (rate(legacygpu_operator_reconcile_errors_total[{RATE}]))",
                           "{{kind}}")], unit="ops"),
        timeseries("Leader", "Leader gauge of each operator replica.",
                   [target("max by (instance) (legacygpu_operator_leader)", "{{instance}}")]),
        timeseries("Tasks by phase", "InferenceTasks by phase, by cluster.",
                   [target("sum by (namespace, cluster, phase) (legacygpu_operator_tasks)",
                           "{{namespace}}/{{cluster}} {{phase}}")]),
        timeseries("Queue depth", "Pending or Queued tasks, by cluster.",
                   [target("sum by (namespace, cluster) (legacygpu_operator_queue_depth)",
                           "{{namespace}}/{{cluster}}")]),
        timeseries("Workers", "Worker pods by readiness, by cluster.",
                   [target("sum by (namespace, cluster, state) (legacygpu_operator_workers)",
                           "{{namespace}}/{{cluster}} {{state}}")]),
        timeseries("Task assignment latency", "Creation to first assignment: median and 99th percentile.",
                   _quantiles("legacygpu_operator_task_assignment_seconds"), unit="s"),
        timeseries("Task transitions", "Phase changes the operator wrote per second, by phase and reason.",
                   [target(f"sum by (phase, reason) (rate(legacygpu_operator_task_transitions_total[{RATE}]))",
                           "{{phase}} {{reason}}")], unit="ops", width=24),
    ]
    return dashboard("legacygpu-operator", "legacygpu / operator",
                     "Reconciles, leadership and the InferenceClusters the operator manages.", panels)


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "cluster-overview": cluster_overview,
    "per-model": per_model,
    "per-gpu": per_gpu,
    "operator": operator,
}


def render(name: str) -> str:
    """One dashboard's file content: stable, sorted JSON."""
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DASHBOARDS:
        path = directory / f"{name}.json"
        path.write_text(render(name))
        written.append(path)
    return written
