"""Everything the live-Prometheus tests scrape, on loopback, plus the Prometheus itself.

Real parts: Debian's ``prometheus`` binary (temp config, 1 s scrape and rule evaluation,
the chart's rendered alert rules), a real local cluster (facade and worker processes,
:class:`helpers.LocalCluster`), a real ``legacygpu node-agent`` process on a fixture sysfs
tree (``legacygpu/testing/sysfs_tree.py``) and the real kopf operator with real worker loops.

Stand-ins, because the real things cannot run here: the operator talks to the API server
emulator with simulated nodes (``tests/operator/operator_harness.py``; the e2e tier has the
real control plane, too heavy to run beside all this on two cores), and the GPU readings
are synthetic values a thread writes into the fixture sysfs files (there is no GPU).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import TOKEN, free_port, wait_until

from legacygpu.testing.sysfs_tree import NodeTree, rx580

REPO = Path(__file__).resolve().parents[2]
LEGACYGPU = str(Path(sys.executable).parent / "legacygpu")
API_JOB = "lg-legacygpu-api"
OPERATOR_JOB = "lg-legacygpu-operator-metrics"
AGENT_JOB = "lg-legacygpu-node-agent"


class Prometheus:
    """``prometheus`` on 127.0.0.1 with a temp config; scrapes every second, evaluates rules every second."""

    def __init__(self, workdir: Path, targets: dict[str, tuple[str, dict[str, Any]]],
                 rule_groups: list[dict[str, Any]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        rules = workdir / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
        scrape = [{"job_name": job, "static_configs": [{"targets": [address]}], **extra}
                  for job, (address, extra) in targets.items()]
        config = workdir / "prometheus.yaml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": scrape,
        }, sort_keys=False))
        self.log = (workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=self.log,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._ready, timeout=60, what="prometheus to be ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}; see {self.log.name}")
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        response = self.http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]  # type: ignore

    def targets_up(self) -> dict[str, bool]:
        active = self.api("targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] == "up" for t in active}

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.http.close()
        self.log.close()


class NodeAgentProcess:
    """``legacygpu node-agent`` on a fixture node with two RX 580s, and a thread playing their load."""

    def __init__(self, root: Path, log: Path) -> None:
        self.node = NodeTree(root)
        self.cards = [self.node.plug(rx580(0)), self.node.plug(rx580(1))]
        self.port = free_port()
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [LEGACYGPU, "node-agent", "--sysfs-root", str(self.node.sysfs), "--dev-root", str(self.node.dev),
             "--kubelet-dir", str(self.node.kubelet_dir), "--health-checks", "sysfs", "--health-interval", "0.5",
             "--metrics-port", str(self.port), "--metrics-address", "127.0.0.1"],
            stdout=self._log, stderr=self._log,
        )
        self.frozen: set[str] = set()
        """Cards whose readings the load thread leaves alone (a test sets them)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="gpu-load", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        """Synthetic readings that move: card 0 busy in waves and warming up, card 1 mostly idle."""
        t0 = time.monotonic()
        while not self._stop.wait(0.5):
            t = time.monotonic() - t0
            for i, card in enumerate(self.cards):
                if card.pci_address in self.frozen:
                    continue
                busy = int(50 + 45 * math.sin(t / 6)) if i == 0 else int(5 + 5 * math.sin(t / 3))
                a = card.pci_address
                _replace(self.node.attribute(a, "gpu_busy_percent"), f"{busy}\n")
                _replace(self.node.attribute(a, "mem_info_vram_used"), f"{(1 + busy / 25) * 2**30:.0f}\n")
                _replace(self.node.sensor(a, "temp1_input"), f"{(45 + busy * 0.35) * 1000:.0f}\n")
                _replace(self.node.sensor(a, "power1_average"), f"{(35 + busy * 1.2) * 1e6:.0f}\n")
                _replace(self.node.sensor(a, "freq1_input"), f"{(300 + busy * 10.4) * 1e6:.0f}\n")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


class OperatorOnEmulator:
    """The real operator (metrics on a loopback port) reconciling a cluster and a few tasks, on its own thread."""

    def __init__(self, repository: Path) -> None:
        sys.path.insert(0, str(REPO / "tests" / "operator"))
        self.repository = repository
        self.port = free_port()
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator-stack", daemon=True)
        self._thread.start()

    def wait_ready(self) -> None:
        if not self.ready.wait(180):
            raise AssertionError(f"the operator stack did not come up: {self.error!r}")
        if self.error is not None:
            raise AssertionError(f"the operator stack failed: {self.error!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from operator_harness import FAST, cluster_manifest, deployment, task_manifest

        flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
        async with deployment(self.repository) as dep:
            await dep.start_operator(replace(FAST, metrics_port=self.port, metrics_host="127.0.0.1"))
            await dep.create(cluster_manifest("digits", replicas=1))
            for i in range(4):
                await dep.create(task_manifest(f"t{i}", "digits", [flat]))
            await dep.create(task_manifest("bad", "digits", [{**flat, "shape": [1, 3]}]))
            self.ready.set()
            n = 0
            while not await asyncio.to_thread(self._stop.wait, 2.0):  # a little steady load
                n += 1
                await dep.create(task_manifest(f"load{n}", "digits", [flat]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def facade_target(url: str) -> tuple[str, dict[str, Any]]:
    return url.removeprefix("http://"), {"authorization": {"type": "Bearer", "credentials": TOKEN}}


def _replace(path: Path, text: str) -> None:
    """Write a fixture sysfs file in one step. Truncate-then-write lets the agent read it empty and drop that
    reading, which a scrape then marks stale: the likely cause of a full-suite run's empty VRAM panel."""
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text)
    scratch.replace(path)


def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    return wait_until(check, timeout=timeout, interval=0.5, what=what)
