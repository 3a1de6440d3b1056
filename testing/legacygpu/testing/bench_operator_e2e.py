"""The operator benchmark on the real API server: ``bench_operator --apiserver e2e``.

    python -m legacygpu.testing.bench_operator --apiserver e2e --out docs/benchmarks/operator-e2e

What runs: the e2e control plane (``e2e/e2ecluster``: etcd, kube-apiserver, -scheduler,
-controller-manager 1.37 built from source, simulated kubelets; started unless one runs), one
``legacygpu operator run`` process authenticated as the operator's ServiceAccount, and one real
worker process per worker pod (``legacygpu worker start --kubernetes`` on the demo digits model
with onnxruntime), started by the node simulator with the pod's own token. Nothing is mocked
but the kubelets. The tasks are created at once from 8 client threads.

Reported (JSON + PNG): tasks/s from the first creation to the last completion; create ->
``Succeeded`` p50/p99; create -> ``Scheduled`` p50/p99; the API writes per task, counted by the API
server itself (``apiserver_request_total`` before and after, :mod:`legacygpu.testing.apiwrites`);
the operator's peak RSS and its RSS against the number of finished tasks (to see whether memory
grows with them); the load average before and after; and the reference measured in the same run,
the same inputs through one TaskRunner called directly.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from legacygpu.core.kube.contract import GROUP, TASK_PLURAL, VERSION, parse_time
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.rbac import rbac_manifests
from legacygpu.testing.apiwrites import parse_request_totals, per_task

__all__ = ["run_e2e_benchmark"]

REPO = Path(__file__).resolve().parents[3]
_FINISHED = ("Succeeded", "Failed")


def _rss_mib(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares MiB per 1,000 finished tasks over ``(finished, rss)`` samples."""
    if len(points) < 3 or len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return round(1000 * sxy / sxx, 2)


def run_e2e_benchmark(
    *, tasks: int, workers: int, per_worker: int, repository: Path, inputs: list[list[dict[str, Any]]], out: Path
) -> dict[str, Any]:
    """Run the benchmark on the e2e control plane; the result without the reference (the caller adds it)."""
    if str(REPO / "e2e") not in sys.path:
        sys.path.insert(0, str(REPO / "e2e"))
    from e2ecluster import Cluster, Kube  # type: ignore[import-not-found]  # e2e/ joins sys.path above

    cluster = Cluster()
    state = cluster.up()
    kube = Kube(state.kubeconfig, cluster)
    namespace = kube.create_namespace("bench")
    logs = REPO / ".cache" / "bench-operator-e2e"  # the operator's log and kubeconfig (a token): never committed
    logs.mkdir(parents=True, exist_ok=True)
    kube.set_worker_command(" ".join([
        sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes", "--backend", "onnxruntime",
        "--model-dir", str(repository.resolve()), "--log-level", "warning",
    ]))  # fmt: skip
    operator: subprocess.Popen[bytes] | None = None
    try:
        kube.apply(all_crds())
        kube.apply(rbac_manifests(namespace=namespace))
        token = kube.token(namespace, "legacygpu-operator")
        kubeconfig = kube.kubeconfig_for_token(token, logs / "operator.kubeconfig", namespace)
        operator = subprocess.Popen(
            [sys.executable, "-m", "legacygpu.cli", "operator", "run", "--kubeconfig", str(kubeconfig),
             "--namespace", namespace, "--no-metrics", "--worker-image", "legacygpu/worker:bench",
             "--log-level", "warning"],
            stdout=(logs / "operator.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceCluster", "metadata": {"name": "bench"},
                "spec": {"replicas": workers, "maxReplicas": max(64, workers), "tasksPerWorker": per_worker,
                         "gpusPerWorker": 0, "backend": "onnxruntime", "models": ["digits"],
                         "schedulingStrategy": "least-loaded"}}  # fmt: skip
        kube.apply(body, namespace)
        kube.wait_for(
            lambda: (kube.get(f"{GROUP}/{VERSION}", "InferenceCluster", "bench", namespace) or {})
            .get("status", {}).get("readyWorkers") == workers,
            timeout=300, what=f"{workers} ready workers",
        )
        time.sleep(3)  # the cluster's start-up writes land before counting
        load_before = os.getloadavg()
        before = parse_request_totals(kube.raw_get("/metrics"))
        created: dict[str, float] = {}

        def create(index: int) -> None:
            name = f"bench-{index:05d}"
            task = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceTask", "metadata": {"name": name},
                    "spec": {"clusterRef": "bench", "model": "digits", "inputs": inputs[index]}}
            stamp = time.time()
            kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, TASK_PLURAL, task)
            created[name] = stamp

        started = time.time()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(tasks)))
        created_in = time.time() - started
        memory: list[tuple[int, float]] = []
        deadline = time.monotonic() + 1800
        while True:
            items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TASK_PLURAL)["items"]
            finished = sum(1 for t in items if (t.get("status") or {}).get("phase") in _FINISHED)
            rss = _rss_mib(operator.pid, "VmRSS")
            if rss is not None:
                memory.append((finished, rss))
            if finished >= tasks:
                break
            if operator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator exited or the run timed out; see {logs / 'operator.log'}")
            time.sleep(2.0)  # the harness's polling is API load too: keep it light
        time.sleep(2.0)  # asynchronous Events (there should be none) land before counting
        after = parse_request_totals(kube.raw_get("/metrics"))
        load_after = os.getloadavg()
        peak = _rss_mib(operator.pid, "VmHWM")
    finally:
        if operator is not None and operator.poll() is None:  # its finalizer goes while the operator runs
            kube.delete({"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceCluster",
                         "metadata": {"name": "bench", "namespace": namespace}})
            with contextlib.suppress(Exception):  # cleanup only: the namespace deletion below still runs
                kube.wait_gone(f"{GROUP}/{VERSION}", "InferenceCluster", "bench", namespace, timeout=120)
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
        kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        kube.close()
    writes = per_task(before, after, tasks)
    assignment, total, completions = [], [], []
    for task in items:
        status, name = task["status"], task["metadata"]["name"]
        scheduled, completed = parse_time(status.get("scheduledTime")), parse_time(status.get("completionTime"))
        if scheduled is not None:
            assignment.append(scheduled.timestamp() - created[name])
        if completed is not None:
            completions.append(completed.timestamp() - started)
            total.append(completed.timestamp() - created[name])
    elapsed = max(completions)
    failed = sum(1 for t in items if t["status"]["phase"] != "Succeeded")
    return {
        "mode": "e2e",
        "tasks": tasks, "workers": workers, "tasks_per_worker": per_worker, "failed": failed,
        "creation_seconds": round(created_in, 3),
        "elapsed_seconds": round(elapsed, 3), "tasks_per_second": round(tasks / elapsed, 2),
        "assignment_seconds": {"p50": round(_percentile(assignment, 50), 4),
                               "p99": round(_percentile(assignment, 99), 4)},
        "end_to_end_seconds": {"p50": round(_percentile(total, 50), 4), "p99": round(_percentile(total, 99), 4)},
        "api_writes": writes,
        "operator_peak_rss_mib": round(peak or 0.0, 1),
        "operator_rss_mib_by_finished_tasks": [[f, round(r, 1)] for f, r in memory],
        "operator_rss_slope_mib_per_1000_finished": _slope(memory),
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "api_server": f"kube-apiserver {state.kube_version} (e2e control plane, loopback)"},
        "_assignment": assignment, "_completions": completions,
    }  # fmt: skip


def plot_e2e(result: dict[str, Any], path: Path) -> None:
    """Completions over time, operator RSS against finished tasks, writes per task by resource."""
    from legacygpu.testing.bench_operator import completions_figure, save_figure

    fig, middle, right = completions_figure(
        result, f"{result['tasks']} tasks, {result['workers']} workers, real API server", "tasks finished")
    memory = result["operator_rss_mib_by_finished_tasks"]
    middle.plot([f for f, _ in memory], [r for _, r in memory], marker=".")
    middle.set(title="operator RSS", xlabel="tasks finished", ylabel="MiB")
    by_resource = {k: v / result["tasks"] for k, v in result["api_writes"]["by_resource"].items()}
    right.barh(list(by_resource), list(by_resource.values()))
    right.set(title=f"API writes per task ({result['api_writes']['task_writes_per_task']} on tasks+events)",
              xlabel="writes per task (creates included)")
    save_figure(fig, path)
