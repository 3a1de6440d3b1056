"""Benchmark: N tasks from creation to Succeeded through the operator, with W workers.

    python -m legacygpu.testing.bench_operator --tasks 1000 --workers 8 --out bench-results/operator
    python -m legacygpu.testing.bench_operator --apiserver e2e --out docs/benchmarks/operator-e2e

The second form runs on the real kube-apiserver of the e2e control plane instead of the
emulator (:mod:`legacygpu.testing.bench_operator_e2e`) and also counts the API writes per task.

What runs (all on loopback, nothing mocked but the API server and the nodes):

* the API server is :class:`~legacygpu.testing.emulator.ApiServerEmulator`
  on its own thread (no kube-apiserver on these machines), with simulated
  GPU nodes (:class:`~legacygpu.testing.simkubelet.SimulatedNodes`);
* the operator is a separate process, ``legacygpu operator run``, so its
  peak memory (``VmHWM``) is its own;
* each worker pod is a process running the real worker loop
  (:func:`~legacygpu.worker.kube.run_kube_worker`) with the real TaskRunner
  and onnxruntime on the demo digits model; every task is one held-out
  digit as a 64-value FP32 tensor.

Reported: tasks/s from the first creation to the last completion; time to
assignment (client-side creation time to ``status.scheduledTime``) p50 and
p99; end-to-end latency p50/p99; the operator's peak RSS; and, as the
reference measured in the same run, the same inputs through one TaskRunner
called directly (no Kubernetes), with the ratio. JSON and a PNG go to
``--out``. All tasks are created at once, so time to assignment includes
queueing for the ``workers x tasksPerWorker`` slots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from legacygpu.core.kube.client import KubeApi, load_configuration
from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION, parse_time
from legacygpu.operator.crdgen import all_crds
from legacygpu.testing.emulator import EmulatorThread
from legacygpu.testing.simkubelet import SimulatedNodes

__all__ = ["main", "run_benchmark"]

log = logging.getLogger(__name__)
NS = "default"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _inputs(count: int) -> list[list[dict[str, Any]]]:
    """``count`` task inputs: held-out digits as the demo model's 64-value tensors."""
    from legacygpu.core.modelcards import ImageSpec
    from legacygpu.worker.demo import digit_png, load_split
    from legacygpu.worker.processing import image_to_array

    spec = ImageSpec(color="grayscale", size=(8, 8), crop_to_content=True, invert=True, scale=(0.0, 16.0),
                     layout="flat")
    _, x_test, _, _ = load_split()
    tensors = [
        [{"name": "input", "datatype": "FP32", "shape": [1, 64],
          "data": [round(float(v), 3) for v in image_to_array(digit_png(row), spec).ravel()]}]
        for row in x_test[: min(count, len(x_test))]
    ]
    return [tensors[i % len(tensors)] for i in range(count)]


_WORKER_SCRIPT = """
import signal, sys, threading
from pathlib import Path
import kubernetes
from legacygpu.core.kube.client import load_configuration
from legacygpu.worker.kube import run_kube_worker
server, namespace, pod, model_dir, port = sys.argv[1:6]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
client = kubernetes.client.ApiClient(load_configuration(server=server))
run_kube_worker(pod_name=pod, namespace=namespace, backend="onnxruntime", model_dir=Path(model_dir),
                api_client=client, stop_event=stop, health_port=int(port))
"""


class _Worker:
    """One worker pod's loop in its own process (what the container would run), ready per /readyz."""

    def __init__(self, url: str, namespace: str, pod: str, repository: Path) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SCRIPT, url, namespace, pod, str(repository), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _results(repository: Path, inputs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The model's result for each input (what a worker reports): the floor's reports carry them."""
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.backends import create_backend
    from legacygpu.worker.runner import TaskRunner

    runner = TaskRunner(ModelRepository(repository), create_backend("onnxruntime"))
    return [runner.run("digits", tensors) for tensors in inputs]


def _reference(repository: Path, inputs: list[list[dict[str, Any]]]) -> float:
    """Tasks/s of the same inputs through one TaskRunner called directly."""
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.backends import create_backend
    from legacygpu.worker.runner import TaskRunner

    runner = TaskRunner(ModelRepository(repository), create_backend("onnxruntime"))
    runner.run("digits", inputs[0])
    started = time.perf_counter()
    for tensors in inputs:
        runner.run("digits", tensors)
    return len(inputs) / (time.perf_counter() - started)


async def _drive(url: str, repository: Path, tasks: int, workers: int, per_worker: int) -> dict[str, Any]:
    api = KubeApi(load_configuration(server=url), concurrency=8)
    operator = subprocess.Popen(
        [sys.executable, "-m", "legacygpu.cli", "operator", "run", "--server", url, "--namespace", NS,
         "--no-metrics", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        async with SimulatedNodes(url, nodes={f"gpu-node-{i}": 2 for i in range((workers + 1) // 2)},
                                  start_worker=lambda ns, pod: _Worker(url, ns, pod, repository)):
            cluster = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceCluster", "metadata": {"name": "bench"},
                       "spec": {"replicas": workers, "maxReplicas": max(64, workers), "tasksPerWorker": per_worker,
                                "backend": "onnxruntime", "schedulingStrategy": "least-loaded"}}
            await api.create(GROUP, VERSION, CLUSTER_PLURAL, NS, cluster)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                body = await api.get(GROUP, VERSION, CLUSTER_PLURAL, NS, "bench")
                if (body.get("status") or {}).get("readyWorkers") == workers:
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("workers did not become ready in 120 s")
            inputs = _inputs(tasks)
            created: dict[str, float] = {}

            def create(index: int) -> None:
                name = f"bench-{index:05d}"
                body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceTask", "metadata": {"name": name},
                        "spec": {"clusterRef": "bench", "model": "digits", "inputs": inputs[index]}}
                api.request_sync("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{TASK_PLURAL}", body=body)
                created[name] = time.time()

            started = time.time()
            with ThreadPoolExecutor(max_workers=8) as pool:
                await asyncio.get_running_loop().run_in_executor(None, lambda: list(pool.map(create, range(tasks))))
            log.info("created %d tasks in %.1f s", tasks, time.time() - started)
            peak = 0.0
            while True:
                peak = max(peak, _peak_rss_mib(operator.pid) or 0.0)
                items = await api.list(GROUP, VERSION, TASK_PLURAL, NS)
                done = [t for t in items if (t.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
                if len(done) >= tasks:
                    break
                if operator.poll() is not None:
                    raise RuntimeError(f"the operator exited: {operator.stderr.read().decode()[-2000:]}")
                await asyncio.sleep(2.0)  # polling is the harness, not the system: keep it light
            peak = max(peak, _peak_rss_mib(operator.pid) or 0.0)
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        api.close()
    failed = [t["metadata"]["name"] for t in items if t["status"]["phase"] != "Succeeded"]
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
    return {
        "tasks": tasks, "workers": workers, "tasks_per_worker": per_worker, "failed": len(failed),
        "elapsed_seconds": round(elapsed, 3), "tasks_per_second": round(tasks / elapsed, 2),
        "assignment_seconds": {"p50": round(_percentile(assignment, 50), 4),
                               "p99": round(_percentile(assignment, 99), 4),
                               "mean": round(statistics.fmean(assignment), 4)},
        "end_to_end_seconds": {"p50": round(_percentile(total, 50), 4), "p99": round(_percentile(total, 99), 4)},
        "operator_peak_rss_mib": round(peak, 1),
        "_assignment": assignment, "_completions": completions, "_items": items, "_created": created,
    }


def completions_figure(result: dict[str, Any], title: str, ylabel: str) -> tuple[Any, Any, Any]:
    """A figure of three panels, the left one the tasks finished over time; returns it and the other two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    done = sorted(result["_completions"])
    left.plot(done, range(1, len(done) + 1))
    left.set(title=title, xlabel="seconds since the first creation", ylabel=ylabel)
    return fig, middle, right


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot(result: dict[str, Any], path: Path) -> None:
    fig, middle, right = completions_figure(
        result, f"{result['tasks']} tasks, {result['workers']} workers: completions", "tasks succeeded")
    waits = sorted(result["_assignment"])
    middle.plot(waits, [(i + 1) / len(waits) for i in range(len(waits))])
    for q in ("p50", "p99"):
        middle.axvline(result["assignment_seconds"][q], linestyle="--", color="grey")
        middle.text(result["assignment_seconds"][q], 0.05, q, rotation=90)
    middle.set(title="time to assignment (CDF)", xlabel="seconds from creation to Scheduled", ylabel="fraction")
    bars = {"through the operator": result["tasks_per_second"],
            "TaskRunner direct (reference)": result["reference_tasks_per_second"]}
    right.bar(list(bars), list(bars.values()), color=["tab:blue", "tab:grey"])
    right.set(title=f"throughput (ratio {result['ratio_to_reference']:.3f})", ylabel="tasks/s")
    save_figure(fig, path)


def run_benchmark(*, tasks: int, workers: int, per_worker: int, out: Path, model_dir: Path | None) -> dict[str, Any]:
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import ensure_demo_model

    repository = model_dir or Path(".cache/bench-models")
    ensure_demo_model(ModelRepository(repository))
    with EmulatorThread(all_crds()) as server:
        result = asyncio.run(_drive(server.url, repository, tasks, workers, per_worker))
    result["reference_tasks_per_second"] = round(_reference(repository, _inputs(tasks)), 2)
    result["ratio_to_reference"] = round(result["tasks_per_second"] / result["reference_tasks_per_second"], 4)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "api_server": "ApiServerEmulator (kmock) on loopback"}
    out.mkdir(parents=True, exist_ok=True)
    _plot(result, out / "operator-bench.png")
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "operator-bench.json").write_text(json.dumps(public, indent=2) + "\n")
    return public


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--tasks-per-worker", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results/operator"))
    parser.add_argument("--model-dir", type=Path, default=None, help="A repository holding the digits model.")
    parser.add_argument("--apiserver", choices=["emulator", "e2e"], default="emulator",
                        help="The emulator in this process, or the real kube-apiserver of the e2e control plane.")
    parser.add_argument("--floor", choices=["also", "only", "no"], default="also",
                        help="e2e only: also measure the API server's floor (the platform's writes and watches "
                             "driven with no operator and no workers, legacygpu.testing.apifloor), only that, or not.")
    parser.add_argument("--floor-lanes", type=int, default=64, help="Concurrent task pipelines of the floor's client.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("kopf", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.apiserver == "e2e":
        return _main_e2e(args)
    result = run_benchmark(tasks=args.tasks, workers=args.workers, per_worker=args.tasks_per_worker,
                           out=args.out, model_dir=args.model_dir)
    rows = [
        ("tasks (failed)", f"{result['tasks']} ({result['failed']})"),
        ("workers x tasks per worker", f"{result['workers']} x {result['tasks_per_worker']}"),
        ("elapsed, first creation to last completion", f"{result['elapsed_seconds']:.2f} s"),
        ("throughput through the operator", f"{result['tasks_per_second']:.1f} tasks/s"),
        ("reference: TaskRunner direct, same inputs", f"{result['reference_tasks_per_second']:.1f} tasks/s"),
        ("ratio to reference", f"{result['ratio_to_reference']:.3f}"),
        ("time to assignment p50 / p99", "{p50:.3f} s / {p99:.3f} s".format(**result["assignment_seconds"])),
        ("end to end p50 / p99", "{p50:.3f} s / {p99:.3f} s".format(**result["end_to_end_seconds"])),
        ("operator peak RSS", f"{result['operator_peak_rss_mib']:.1f} MiB"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        sys.stdout.write(f"{key:<{width}}  {value}\n")
    sys.stdout.write(f"wrote {args.out / 'operator-bench.json'} and {args.out / 'operator-bench.png'}\n")
    return 0


def _main_e2e(args: argparse.Namespace) -> int:
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.testing.bench_operator_e2e import plot_e2e, run_e2e_benchmark
    from legacygpu.worker.demo import ensure_demo_model

    repository = (args.model_dir or Path(".cache/bench-models")).resolve()
    ensure_demo_model(ModelRepository(repository))
    inputs = _inputs(args.tasks)
    result = run_e2e_benchmark(tasks=args.tasks, workers=args.workers, per_worker=args.tasks_per_worker,
                               repository=repository, inputs=inputs, out=args.out,
                               results=_results(repository, inputs) if args.floor != "no" else None,
                               floor=args.floor, floor_lanes=args.floor_lanes)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.floor == "only":
        (args.out / "operator-floor-e2e.json").write_text(json.dumps(result, indent=2) + "\n")
        _write_rows(_floor_rows(result["floor"]))
        sys.stdout.write(f"wrote {args.out / 'operator-floor-e2e.json'}\n")
        return 0
    result["reference_tasks_per_second"] = round(_reference(repository, inputs), 2)
    result["ratio_to_reference"] = round(result["tasks_per_second"] / result["reference_tasks_per_second"], 4)
    result["target_tasks_per_second"] = 100
    result["target_met"] = result["tasks_per_second"] >= 100
    plot_e2e(result, args.out / "operator-bench-e2e.png")
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (args.out / "operator-bench-e2e.json").write_text(json.dumps(public, indent=2) + "\n")
    writes = result["api_writes"]
    rows = [
        ("tasks (failed)", f"{result['tasks']} ({result['failed']})"),
        ("workers x tasks per worker", f"{result['workers']} x {result['tasks_per_worker']}"),
        ("throughput, first creation to last completion", f"{result['tasks_per_second']:.1f} tasks/s"
         f" (target 100: {'met' if result['target_met'] else 'MISSED'})"),
        ("reference: TaskRunner direct, same inputs", f"{result['reference_tasks_per_second']:.1f} tasks/s"),
        ("create -> Scheduled p50 / p99", "{p50:.3f} s / {p99:.3f} s".format(**result["assignment_seconds"])),
        ("create -> Succeeded p50 / p99", "{p50:.3f} s / {p99:.3f} s".format(**result["end_to_end_seconds"])),
        ("creating all tasks (32 connections)", f"{result['creation_seconds']:.2f} s"),
        *((f"stage {name} p50 / p99", "{p50:.3f} s / {p99:.3f} s".format(**value))
          for name, value in result["stage_seconds"].items()),
        ("CPU per task by process (ms)", ", ".join(f"{k} {v}" for k, v in result["cpu_ms_per_task"].items())),
        ("writes per task on tasks + events (besides create)", f"{writes['task_writes_per_task']}"),
        ("all API writes per task (besides create)", f"{writes['all_writes_per_task']}"),
        ("operator peak RSS", f"{result['operator_peak_rss_mib']:.1f} MiB"),
        ("operator RSS slope", f"{result['operator_rss_slope_mib_per_1000_finished']} MiB per 1,000 finished"),
        ("load average before / after", f"{result['load_average']['before']} / {result['load_average']['after']}"),
        *(_floor_rows(result["floor"]) if "floor" in result else []),
    ]
    _write_rows(rows)
    sys.stdout.write(f"wrote {args.out / 'operator-bench-e2e.json'} and {args.out / 'operator-bench-e2e.png'}\n")
    return 0


def _floor_rows(floor: dict[str, Any]) -> list[tuple[str, str]]:
    """The floor's lines of the console table (:mod:`legacygpu.testing.apifloor`)."""
    cpu = ", ".join(f"{k} {v}" for k, v in floor["cpu_ms_per_task"].items())
    idle = ", ".join(f"{k} {v}" for k, v in floor["idle_cpu_ms_per_second"].items())
    return [
        ("floor: tasks (failed), watch events complete",
         f"{floor['tasks']} ({floor['failed']}), {floor['watch_events']['complete']}"),
        ("floor: API server alone, full drive", f"{floor['tasks_per_second']} tasks/s ({floor['client_lanes']} lanes)"),
        ("floor: CPU per task by process (ms)", cpu),
        ("floor: idle CPU by process (ms/s)", idle),
        ("floor: ceiling, kube-apiserver + etcd CPU only",
         f"{floor['ceiling_tasks_per_second']} tasks/s on {floor['cpus']} CPUs "
         f"({floor['apiserver_etcd_cpu_ms_per_task']} ms per task)"),
        ("floor: load average before / after", f"{floor['load_average']['before']} / {floor['load_average']['after']}"),
    ]  # fmt: skip


def _write_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        sys.stdout.write(f"{key:<{width}}  {value}\n")


if __name__ == "__main__":
    raise SystemExit(main())
