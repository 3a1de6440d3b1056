"""The operator benchmark on the real API server: ``bench_operator --apiserver e2e``.

    python -m legacygpu.testing.bench_operator --apiserver e2e --out docs/benchmarks/operator-e2e

What runs: the e2e control plane (``e2e/e2ecluster``: etcd, kube-apiserver, -scheduler,
-controller-manager 1.37 built from source, simulated kubelets; started unless one runs), one
``legacygpu operator run`` process authenticated as the operator's ServiceAccount, and one real
worker process per worker pod (``legacygpu worker start --kubernetes`` on the demo digits model
with onnxruntime), started by the node simulator with the pod's own token. Nothing is mocked
but the kubelets. The tasks are created at once through 32 concurrent connections
(:func:`legacygpu.testing.apifloor.create_tasks`).

Reported (JSON + PNG): tasks/s from the first creation to the last completion; create ->
``Succeeded`` p50/p99; create -> ``Scheduled`` p50/p99; the API writes per task, counted by the API
server itself (``apiserver_request_total`` before and after, :mod:`legacygpu.testing.apiwrites`);
the operator's peak RSS and its RSS against the number of finished tasks (to see whether memory
grows with them); the CPU each process used per task and where a task's time goes (its status
times); the load average before and after; and the reference measured in the same run, the same
inputs through one TaskRunner called directly.

First (``--floor also``, the default), on the same control plane and before the platform starts,
the API server's floor (:mod:`legacygpu.testing.apifloor`): the same creates, status writes and
watches driven with no operator and no workers, with the control plane's CPU per task and the
throughput ceiling it implies on this machine (the ``floor`` section of the JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legacygpu.core.kube.client import json_lines, open_watch, request_json
from legacygpu.core.kube.contract import GROUP, TASK_PLURAL, VERSION, parse_time
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.rbac import rbac_manifests
from legacygpu.testing.apifloor import FloorClients, create_tasks, drive_floor, floor_summary
from legacygpu.testing.apiwrites import parse_request_totals, per_task

__all__ = ["run_e2e_benchmark"]

REPO = Path(__file__).resolve().parents[3]
CREATE_LANES = 32
"""Concurrent creates (:func:`legacygpu.testing.apifloor.create_tasks`): enough that creating 1,000 tasks
is not what bounds the run."""
_FINISHED = ("Succeeded", "Failed")


def _rss_mib(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_CpuReading = dict[str, dict[tuple[int, int], float]]
"""CPU seconds used so far, by component, then by process (pid and start time, so a reused pid is another)."""


def _cpu_seconds(named: dict[str, int]) -> _CpuReading:
    """CPU seconds used so far by each process of each named component (a pid and its descendants).

    ``named`` maps a component to its pid (the simulator's children are the worker processes). A
    process not under any named pid is left out. Read two of these and take :func:`_cpu_used`.
    """
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[19]), (int(fields[11]) + int(fields[12])) / tick)
    owner = {pid: name for name, pid in named.items()}
    reading: _CpuReading = {name: {} for name in named}
    for pid, (started, seconds) in used.items():
        ancestor, hops = pid, 0
        while ancestor not in owner and ancestor > 1 and hops < 32:
            ancestor, hops = parents.get(ancestor, 0), hops + 1
        if ancestor in owner:
            reading[owner[ancestor]][pid, started] = seconds
    return reading


def _cpu_used(before: _CpuReading, after: _CpuReading) -> dict[str, float]:
    """CPU seconds each component used between two readings: per process, what it used since the first
    (all of it for a process started since). A process that ended in between is left out: a worker of an
    earlier run exiting now took its whole lifetime's CPU out of a plain sum, which went negative."""
    return {name: sum(seconds - before.get(name, {}).get(key, 0.0) for key, seconds in processes.items())
            for name, processes in after.items()}


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


def _stages(items: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Where a task's time goes, from the times written in its status (p50/p99 seconds).

    ``scheduled_to_running``: the worker seeing its assignment and starting it (``startTime``); ``running_to_finished``:
    the run and the report; ``finished_to_next_scheduled``: from a task's completion on a worker to
    the next assignment to that worker (the operator refilling a freed slot), counted only for
    assignments made after the completion.
    """
    pickup, run, refill = [], [], []
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for task in items:
        status = task.get("status") or {}
        scheduled = parse_time(status.get("scheduledTime"))
        started, finished = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
        if scheduled is not None and started is not None:
            pickup.append((started - scheduled).total_seconds())
        if started is not None and finished is not None:
            run.append((finished - started).total_seconds())
        worker = (status.get("workerRef") or {}).get("pod")
        if worker and scheduled is not None and finished is not None:
            by_worker.setdefault(worker, []).append((scheduled.timestamp(), finished.timestamp()))
    for spans in by_worker.values():
        assigned = sorted(s for s, _ in spans)
        for _, done in spans:
            following = [s for s in assigned if s >= done]
            if following:
                refill.append(following[0] - done)
    return {
        name: {"p50": round(_percentile(values, 50), 4), "p99": round(_percentile(values, 99), 4)}
        for name, values in (("scheduled_to_running", pickup), ("running_to_finished", run),
                             ("finished_to_next_scheduled", refill))
    }  # fmt: skip


def _watch_until_finished(
    client: Any, path: str, tasks: int, deadline: float, sample: Callable[[int], None]
) -> None:
    """Follow the tasks with one watch until ``tasks`` have finished; ``sample`` every 2 s.

    A watch, not a list every few seconds: listing 1,000 tasks again and again cost the API
    server more than the tasks' own writes (every listed object is encoded anew), and that is
    the harness's cost, not the operator's.
    """
    finished: set[str] = set()
    version = ""
    last = 0.0
    while len(finished) < tasks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(finished)} of {tasks} tasks finished in time")
        if not version:  # start, or the watch's version expired (410): list once
            answer = request_json(client, "GET", path)
            version = answer["metadata"]["resourceVersion"]
            finished |= {t["metadata"]["name"] for t in answer["items"]
                         if (t.get("status") or {}).get("phase") in _FINISHED}  # fmt: skip
        stream = open_watch(client, path, query={"resourceVersion": version}, timeout=10)
        try:
            for event in json_lines(stream):
                body = event.get("object") or {}
                if event.get("type") == "ERROR":
                    version = ""
                    break
                version = body["metadata"]["resourceVersion"]
                if (body.get("status") or {}).get("phase") in _FINISHED:
                    finished.add(body["metadata"]["name"])
                if time.monotonic() - last >= 2.0:
                    last = time.monotonic()
                    sample(len(finished))
                if len(finished) >= tasks:
                    break
        finally:
            stream.release_conn()
        sample(len(finished))


def _measure_floor(
    kube: Any, cluster: Any, state: Any, inputs: list[list[dict[str, Any]]], results: list[dict[str, Any]],
    workers: int, lanes: int,
) -> dict[str, Any]:
    """The API server's floor on this control plane (:mod:`legacygpu.testing.apifloor`), before the platform runs.

    In a namespace of its own, deleted (and waited on: the namespace controller deleting the
    tasks costs the API server too) before the platform's run starts.
    """
    namespace = kube.create_namespace("floor")
    try:
        kube.apply(all_crds())
        kube.apply(rbac_manifests(namespace=namespace))
        clients = FloorClients(
            server=state.server, ca_file=str(cluster.pki.ca_cert),
            admin_cert=_admin_cert(cluster),
            operator_token=kube.token(namespace, "legacygpu-operator"),
            worker_token=kube.token(namespace, "legacygpu-worker"),
        )  # fmt: skip
        time.sleep(2.0)  # the namespace's and RBAC's own writes settle
        idle_before, idle_started = _cpu_seconds(state.pids), time.monotonic()
        time.sleep(3.0)
        idle_after, idle_seconds = _cpu_seconds(state.pids), time.monotonic() - idle_started
        marks: dict[str, Any] = {}

        def start() -> None:
            marks["cpu"], marks["client"] = _cpu_seconds(state.pids), time.process_time()

        load_before = os.getloadavg()
        run = asyncio.run(drive_floor(clients, namespace=namespace, inputs=inputs, results=results,
                                      workers=workers, lanes=lanes, on_start=start))  # fmt: skip
        after, client_after = _cpu_seconds(state.pids), time.process_time()
        cpu_ms = {name: 1000 * seconds for name, seconds in _cpu_used(marks["cpu"], after).items()}
        cpu_ms["floor client (this process)"] = 1000 * (client_after - marks["client"])
        idle = {name: 1000 * seconds / idle_seconds for name, seconds in _cpu_used(idle_before, idle_after).items()}
        summary = floor_summary(run, cpu_ms, idle, lanes=lanes, workers=workers)
        summary["load_average"] = {"before": [round(v, 2) for v in load_before],
                                   "after": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
        return summary
    finally:
        kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        with contextlib.suppress(Exception):  # a namespace slow to go only costs the next run some noise
            kube.wait_gone("v1", "Namespace", namespace, timeout=300)


def run_e2e_benchmark(
    *, tasks: int, workers: int, per_worker: int, repository: Path, inputs: list[list[dict[str, Any]]], out: Path,
    results: list[dict[str, Any]] | None = None, floor: str = "also", floor_lanes: int = 64,
) -> dict[str, Any]:
    """Run the benchmark on the e2e control plane; the result without the reference (the caller adds it).

    ``floor``: ``"also"`` measures the API server's floor first (``results`` are the model's
    results for ``inputs``, which the floor's reports carry), ``"only"`` measures nothing else,
    ``"no"`` skips it.
    """
    if str(REPO / "e2e") not in sys.path:
        sys.path.insert(0, str(REPO / "e2e"))
    from e2ecluster import Cluster, Kube  # type: ignore[import-not-found]  # e2e/ joins sys.path above

    cluster = Cluster()
    state = cluster.up()
    kube = Kube(state.kubeconfig, cluster)
    measured_floor = None
    if floor != "no" and results is None:
        raise ValueError("the floor's reports carry the model's results: pass results= (or floor='no')")
    if floor != "no":
        try:
            measured_floor = _measure_floor(kube, cluster, state, inputs, results, workers,
                                            floor_lanes)  # fmt: skip
        except BaseException:
            kube.close()
            raise
        if floor == "only":
            kube.close()
            return {"mode": "e2e-floor", "tasks": tasks, "workers": workers, "floor": measured_floor,
                    "machine": _machine(state)}  # fmt: skip
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
        components = {**state.pids, "operator": operator.pid, "harness (creates, polls)": os.getpid()}
        cpu_before = _cpu_seconds(components)
        bodies = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceTask", "metadata": {"name": f"bench-{i:05d}"},
                   "spec": {"clusterRef": "bench", "model": "digits", "inputs": inputs[i]}} for i in range(tasks)]
        started = time.time()
        created = asyncio.run(create_tasks(state.server, str(cluster.pki.ca_cert), _admin_cert(cluster), namespace,
                                           bodies, lanes=CREATE_LANES))  # fmt: skip
        created_in = time.time() - started
        memory: list[tuple[int, float]] = []

        def sample(finished: int) -> None:
            rss = _rss_mib(operator.pid, "VmRSS")
            if rss is not None:
                memory.append((finished, rss))
            if operator.poll() is not None:
                raise RuntimeError(f"the operator exited; see {logs / 'operator.log'}")

        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{TASK_PLURAL}"
        _watch_until_finished(kube.api, path, tasks, time.monotonic() + 1800, sample)
        cpu_after = _cpu_seconds(components)  # before the harness's own list of every task below
        load_after = os.getloadavg()
        items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TASK_PLURAL)["items"]
        time.sleep(2.0)  # asynchronous Events (there should be none) land before counting
        after = parse_request_totals(kube.raw_get("/metrics"))
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
        "stage_seconds": _stages(items),
        "cpu_ms_per_task": {
            ("simulator + workers" if name == "simulator" else name): round(1000 * seconds / tasks, 2)
            for name, seconds in _cpu_used(cpu_before, cpu_after).items()
        },
        "api_writes": writes,
        "operator_peak_rss_mib": round(peak or 0.0, 1),
        "operator_rss_mib_by_finished_tasks": [[f, round(r, 1)] for f, r in memory],
        "operator_rss_slope_mib_per_1000_finished": _slope(memory),
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
        "machine": _machine(state),
        **({"floor": measured_floor} if measured_floor is not None else {}),
        "_assignment": assignment, "_completions": completions,
    }  # fmt: skip


def _admin_cert(cluster: Any) -> tuple[str, str]:
    return str(cluster.pki.cert("admin")), str(cluster.pki.key("admin"))


def _machine(state: Any) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "api_server": f"kube-apiserver {state.kube_version} (e2e control plane, loopback)"}


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
