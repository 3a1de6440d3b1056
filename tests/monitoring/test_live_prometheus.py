"""Dashboards and alerts against a live Prometheus scraping the real components under load.

One module-wide stack (``stack.py``): Debian's Prometheus scraping a local cluster (facade
and worker processes) that a thread keeps feeding digit images, the operator reconciling an
InferenceCluster on the API server emulator, and a node agent on fixture sysfs, with the
chart's alert rules rendered with ``for: 2s``. The tests check that killing a worker makes
Prometheus fire ``LegacyGPUWorkerLost`` (and that it was not firing before), that a card
running hot and one losing a sysfs file fire ``LegacyGPUTooHot`` and ``LegacyGPUUnhealthy``,
and that every panel query of every dashboard, variables substituted, returns at least one series. The
second test also draws each dashboard from the live data (``pictures.py``): into the folder
named by ``LEGACYGPU_DASHBOARD_PICTURES`` (docs/images to refresh the committed ones), else
into a temp folder.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chart.helmchart import find, render
from helpers import SAMPLES, LocalCluster, image_tensor, slow_model

from legacygpu.core.monitoring import DASHBOARDS

from .pictures import draw, legend
from .stack import (
    AGENT_JOB,
    API_JOB,
    OPERATOR_JOB,
    NodeAgentProcess,
    OperatorOnEmulator,
    Prometheus,
    facade_target,
    until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (apt) is not installed"),
]

RULES = {"metrics": {"serviceMonitor": {"enabled": True},
                     "prometheusRule": {"enabled": True, "for": "2s"}}}  # fmt: skip
RATE_INTERVAL = "15s"
log = logging.getLogger(__name__)


@dataclass
class Stack:
    cluster: LocalCluster
    prometheus: Prometheus
    agent: NodeAgentProcess
    operator: OperatorOnEmulator
    slow_model: str
    started: float = field(default_factory=time.time)
    killed: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def kill_a_running_worker(self) -> dict[str, Any]:
        """Once per stack: kill the worker running a slow task; what was seen before and after."""
        with self._lock:
            if self.killed:
                return self.killed
            lost = f'legacygpu_workers{{job="{API_JOB}", state="lost"}}'
            until(lambda: self.prometheus.query(f"count_over_time({lost}[1m]) >= 3"),
                  "a few scrapes of the facade before the kill")
            before = [a for a in self.prometheus.alerts() if a["labels"]["alertname"] == "LegacyGPUWorkerLost"]
            task = self.cluster.submit(model=self.slow_model, max_retries=2, inputs=[
                {"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [1.0] * 1024}])
            running = self.cluster.wait_phase(task["id"], {"Running"}, timeout=120)
            victim = self.cluster.http.get(f"/cluster/workers/{running['worker_id']}").json()
            os.kill(victim["pid"], signal.SIGKILL)
            killed_at = time.time()

            def firing() -> list[dict[str, Any]]:
                return [a for a in self.prometheus.alerts()
                        if a["labels"]["alertname"] == "LegacyGPUWorkerLost" and a["state"] == "firing"]

            fired = until(firing, "LegacyGPUWorkerLost to fire", timeout=90)
            self.cluster.start_worker("w3")  # capacity back, as an operator would do
            self.killed = {"before": before, "fired": fired, "after_s": time.time() - killed_at,
                           "victim": victim["name"], "task": task["id"]}
            return self.killed


def _load(cluster: LocalCluster, stop: threading.Event) -> None:
    """A little steady load: a digit image every 0.8 s; now and then a tensor the model refuses, or a task
    with a 1 s deadline."""
    images = [image_tensor(SAMPLES / f"digit-{d}.png") for d in range(10)]
    n = 0
    while not stop.wait(0.8):
        n += 1
        try:
            if n % 10 == 0:
                cluster.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [
                    {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0.0] * 3}]})
            elif n % 7 == 0:  # a tight deadline: fails (DeadlineExceeded) whenever the queue is not empty
                cluster.http.post("/cluster/tasks/submit", json={"model": "digits", "timeout_seconds": 1,
                                                                  "inputs": [images[n % 10]]})
            else:
                cluster.http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [images[n % 10]]})
        except Exception:  # the facade busy or stopping: the next round tries again
            continue


@pytest.fixture(scope="module")
def stack(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx

    began = time.time()
    work = tmp_path_factory.mktemp("live-prometheus")
    data = work / "data"
    shutil.copytree(demo_repository, data / "models")
    path = slow_model(work / "slow.onnx", layers=60)
    ModelRepository(data / "models").add(card_from_onnx("slow", path), path)
    agent_root = Path(tempfile.mkdtemp(prefix="na-", dir="/tmp"))  # unix socket paths stay short
    cluster = LocalCluster(data)
    stop_load = threading.Event()
    started: list[Any] = []
    try:
        cluster.start_api()
        started.append(cluster)
        log.info("facade up %.1f s into the setup", time.time() - began)
        # The slow starts overlap: the operator's stack and the node agent come up while the workers do.
        operator = OperatorOnEmulator(demo_repository)
        started.append(operator)
        agent = NodeAgentProcess(agent_root, work / "node-agent.log")
        started.append(agent)
        doomed = [cluster.submit(model="digits", timeout_seconds=1,
                                 inputs=[{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}])
                  for _ in range(2)]
        # No worker yet: they can only miss their deadline (Failed, DeadlineExceeded), the failures panel's data.
        # Workers start once they have: one that registers within the second would run them.
        until(lambda: all(cluster.http.get(f"/cluster/tasks/{t['id']}/status").json()["phase"] == "Failed"
                          for t in doomed), "the deadline tasks to fail", timeout=30)
        for name in ("w1", "w2"):
            cluster.workers[name] = cluster._spawn(name, "worker", "start", "--backend", "onnxruntime", "--name", name)
        (rule,) = find(render(RULES), "PrometheusRule")
        prometheus = Prometheus(work / "prometheus", {
            API_JOB: facade_target(cluster.url),
            OPERATOR_JOB: (f"127.0.0.1:{operator.port}", {"honor_labels": True}),
            AGENT_JOB: (f"127.0.0.1:{agent.port}", {}),
        }, rule["spec"]["groups"])
        started.append(prometheus)
        since = time.time()
        operator.wait_ready()
        log.info("operator stack ready after %.1f s", time.time() - since)
        for name in ("w1", "w2"):
            until(lambda n=name: cluster.worker(n), f"worker {name} to register", timeout=120)  # type: ignore[misc]
        log.info("workers registered after %.1f s", time.time() - since)
        until(lambda: prometheus.targets_up() == {API_JOB: True, OPERATOR_JOB: True, AGENT_JOB: True},
              "every target up")
        load = threading.Thread(target=_load, args=(cluster, stop_load), name="load", daemon=True)
        load.start()
        yield Stack(cluster, prometheus, agent, operator, "slow", started=since)
    finally:
        stop_load.set()
        for part in reversed(started):
            part.stop()
        shutil.rmtree(agent_root, ignore_errors=True)


def test_killing_a_worker_fires_the_worker_lost_alert(stack: Stack) -> None:
    seen = stack.kill_a_running_worker()
    assert seen["before"] == [], "LegacyGPUWorkerLost was already pending or firing before any worker died"
    (alert,) = seen["fired"]
    assert alert["labels"] == {"alertname": "LegacyGPUWorkerLost", "job": API_JOB, "state": "lost",
                               "severity": "warning", "instance": alert["labels"]["instance"]}  # fmt: skip
    assert "declared lost" in alert["annotations"]["description"]
    # The killed worker's running task was retried because its worker was lost, and Prometheus saw it.
    retried = until(lambda: stack.prometheus.query(
        f'legacygpu_task_retries_total{{job="{API_JOB}", reason="WorkerLost"}} > 0'), "the retry scraped")
    assert float(retried[0]["value"][1]) >= 1
    task = stack.cluster.task(seen["task"])
    assert [h["outcome"] for h in task["history"]][:1] == ["WorkerLost"]


def _variables(stack: Stack) -> dict[str, str]:
    models = stack.prometheus.api("label/model/values", **{"match[]": "legacygpu_tasks_submitted_total"})
    (instance,) = stack.prometheus.api("label/instance/values", **{"match[]": "legacygpu_gpu_info"})
    gpus = stack.prometheus.api("label/gpu/values", **{"match[]": f'legacygpu_gpu_info{{instance="{instance}"}}'})
    assert "digits" in models and len(gpus) == 2, (models, gpus)
    return {"model": "digits", "instance": instance, "gpu": sorted(gpus)[0], "__rate_interval": RATE_INTERVAL}


def substitute(expr: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], expr)


def test_every_dashboard_panel_returns_series_and_is_drawn(stack: Stack) -> None:
    stack.kill_a_running_worker()  # retries and lost workers are among the panels
    time.sleep(3)  # a few scrapes after it
    variables = _variables(stack)
    empty = []
    out = Path(os.environ.get("LEGACYGPU_DASHBOARD_PICTURES") or tempfile.mkdtemp(prefix="dashboards-"))
    out.mkdir(parents=True, exist_ok=True)
    end = time.time()
    start = max(stack.started, end - 300)
    for name, build in DASHBOARDS.items():
        board = build()
        data: dict[int, list[tuple[str, list[float], list[float]]]] = {}
        for panel in board["panels"]:
            drawn = data.setdefault(panel["id"], [])
            for t in panel["targets"]:
                expr = substitute(t["expr"], variables)
                if not stack.prometheus.query(expr):
                    empty.append(f"{name} / {panel['title']}: {expr}")
                for s in stack.prometheus.query_range(expr, start, end, 1):
                    points = [(float(ts), float(v)) for ts, v in s["values"]]
                    drawn.append((legend(t["legendFormat"], s["metric"]), [p[0] for p in points],
                                  [p[1] for p in points]))
            if panel["type"] == "timeseries":
                finite = [v for _, _, values in drawn for v in values if math.isfinite(v)]
                assert finite, f"{name} / {panel['title']}: no finite value over the run"
        picture = out / f"dashboard-{name}.png"
        subtitle = (f"live data of a {end - start:.0f} s test run (tests/monitoring): local cluster, operator on "
                    f"the API emulator, node agent on fixture sysfs; model={variables['model']} "
                    f"gpu={variables['gpu']}")
        draw(board, data, picture, subtitle)
        assert picture.stat().st_size > 20_000, f"{picture} looks empty"
    assert empty == [], "panel queries without any series:\n" + "\n".join(empty)


def test_a_hot_card_and_a_broken_card_fire_the_gpu_alerts(stack: Stack) -> None:
    node, (first, second) = stack.agent.node, stack.agent.cards
    hot, broken = first.pci_address, second.pci_address

    def gpu_alerts() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for a in stack.prometheus.alerts():
            if a["state"] == "firing" and a["labels"]["alertname"] in ("LegacyGPUTooHot", "LegacyGPUUnhealthy"):
                out.setdefault(a["labels"]["alertname"], set()).add(a["labels"]["gpu"])
        return out

    assert gpu_alerts() == {}, "GPU alerts fired before anything went wrong"
    stack.agent.frozen.update({hot, broken})
    try:
        node.sensor(hot, "temp1_input").write_text("96000\n")
        node.break_file(broken, "mem_info_vram_total")
        fired = until(lambda: len(f := gpu_alerts()) == 2 and f, "both GPU alerts to fire")
        assert fired == {"LegacyGPUTooHot": {hot}, "LegacyGPUUnhealthy": {broken}}
    finally:
        node.restore_file(broken, "mem_info_vram_total", f"{second.vram_bytes}\n")
        stack.agent.frozen.clear()
    until(lambda: not gpu_alerts(), "the GPU alerts to resolve")
