"""The facade's Kubernetes backend: the same REST API, WebSocket events and CLI, over the custom resources.

Real: the facade (FastAPI on uvicorn, loopback HTTP), the CLI, the operator and the worker loops.
Stand-ins (see operator_harness): the API server emulator and the simulated nodes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from operator_harness import Deployment, cluster_manifest, eventually, phase

from legacygpu.api.app import create_app
from legacygpu.api.backends.kubernetes import KubernetesBackend
from legacygpu.cli import main
from legacygpu.core.config import Settings
from legacygpu.core.kube.contract import CLUSTER_PLURAL

REPO = Path(__file__).resolve().parents[2]
TOKEN = "facade-test-token-0123456789"


class Facade:
    """The facade app served by uvicorn on a free loopback port, on its own thread."""

    def __init__(self, settings: Settings, backend: KubernetesBackend) -> None:
        from helpers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings, backend=backend), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Facade:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            threading.Event().wait(0.05)
        raise AssertionError("the facade did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
async def facade(dep: Deployment, tmp_path: Path, demo_repository: Path) -> AsyncIterator[Facade]:
    shutil.copytree(demo_repository, tmp_path / "data" / "models")
    settings = Settings(
        cluster_backend="kubernetes", kube_namespace="default", kube_cluster="digits",
        data_dir=tmp_path / "data", api_token=TOKEN,
    )
    backend = KubernetesBackend(settings, configuration=dep.configuration)
    await dep.start_operator()
    await dep.create(cluster_manifest("digits", replicas=2))

    async def ready() -> bool:
        body = await dep.cluster("digits")
        return ((body or {}).get("status") or {}).get("readyWorkers") == 2

    await eventually(ready, what="2 ready workers")
    with Facade(settings, backend) as running:
        yield running


def cli(*args: str, url: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--api", url, "--token", TOKEN, "-o", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def http(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


async def test_cli_and_rest_work_unchanged_against_kubernetes(facade: Facade, dep: Deployment) -> None:
    digit = REPO / "examples" / "digits" / "digit-7.png"
    task = await asyncio.to_thread(cli, "task", "submit", "-m", "digits", "-i", str(digit), "--wait", url=facade.url)
    assert task["phase"] == "Succeeded" and task["result"]["top_k"][0]["label"] == "7"
    body = await dep.task(task["id"])
    assert body is not None and body["spec"]["clusterRef"] == "digits"  # the task is the custom resource

    listed = await asyncio.to_thread(cli, "task", "list", url=facade.url)
    assert [t["id"] for t in listed["data"]] == [task["id"]] and listed["count"] == 1

    async def counted() -> Any:  # workers publish their counts at most once a second
        workers = await asyncio.to_thread(cli, "cluster", "workers", "list", url=facade.url)
        return workers if sum(w["tasks_succeeded"] for w in workers["data"]) == 1 else None

    workers = await eventually(counted, what="the worker's count of succeeded tasks")
    assert len(workers["data"]) == 2 and {w["state"] for w in workers["data"]} == {"active"}
    assert {w["device"]["backend"] for w in workers["data"]} == {"onnxruntime"}
    status = await asyncio.to_thread(cli, "cluster", "status", url=facade.url)
    assert status["health"]["backend"] == "kubernetes" and status["tasks_by_phase"]["Succeeded"] == 1

    with http(facade.url) as client:
        bad = client.post("/cluster/tasks/submit", json={
            "model": "digits", "inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert bad.status_code == 422 and "shape" in bad.json()["detail"]
        unknown = client.post("/cluster/tasks/submit", json={
            "model": "nope", "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]})
        assert unknown.status_code == 422
        assert client.post("/cluster/workers/register", json={"name": "x"}).status_code == 409
        assert client.get("/cluster/tasks/task-does-not-exist").status_code == 404


async def test_cancel_drain_and_events(facade: Facade, dep: Deployment) -> None:
    from websockets.sync.client import connect

    received: list[dict[str, Any]] = []
    stop = threading.Event()

    def listen() -> None:
        with connect(f"ws://127.0.0.1:{facade.port}/ws/cluster/events?token={TOKEN}") as socket:
            while not stop.is_set():
                try:
                    received.append(json.loads(socket.recv(timeout=0.2)))
                except TimeoutError:
                    continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    await dep.patch_spec(CLUSTER_PLURAL, "digits", {"suspend": True})
    flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    with http(facade.url) as client:
        created = client.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [flat]})
        assert created.status_code == 201
        task_id = created.json()["id"]
        await eventually(lambda: _phase_is(dep, task_id, "Queued"), what="queued while suspended")
        cancelled = client.post(f"/cluster/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["phase"] == "Cancelled"
        assert client.post(f"/cluster/tasks/{task_id}/cancel").status_code == 409

        await dep.patch_spec(CLUSTER_PLURAL, "digits", {"suspend": False})

        def two_active() -> bool:
            data = client.get("/cluster/workers").json()["data"]
            return len(data) == 2 and all(w["state"] == "active" for w in data)

        await eventually(lambda: asyncio.to_thread(two_active), timeout=30, what="workers back")
        worker = client.get("/cluster/workers").json()["data"][0]["id"]
        drained = client.post(f"/cluster/workers/{worker}/drain")
        assert drained.status_code == 200 and drained.json()["state"] == "draining"
        for _ in range(3):
            done = client.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [flat]}).json()["id"]
            await eventually(lambda d=done: _phase_is(dep, d, "Succeeded"), what="task after drain")
            assert (await dep.task(done))["status"]["workerRef"]["pod"] != worker
    stop.set()
    listener.join(timeout=5)
    types = [e["type"] for e in received]
    assert types[0] == "hello" and "task.updated" in types and "worker.updated" in types
    assert any(e["type"] == "task.updated" and e["object"]["id"] == task_id and e["object"]["phase"] == "Cancelled"
               for e in received)


async def _phase_is(dep: Deployment, name: str, wanted: str) -> bool:
    return phase(await dep.task(name)) == wanted




class _NoWatchBackend(KubernetesBackend):
    """The real backend, started without its initial list and watches (there is no server to list from)."""

    async def start(self) -> None:
        from legacygpu.core.kube.client import KubeApi

        assert self._configuration is not None
        self._api = KubeApi(self._configuration)


def test_an_unreachable_api_server_is_a_503_that_says_so(tmp_path: Path) -> None:
    import socket

    from legacygpu.core.kube.client import load_configuration

    with socket.socket() as probe:  # a port nobody listens on: the API server is gone
        probe.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{probe.getsockname()[1]}"
    configuration = load_configuration(server=gone)
    configuration.retries = 0
    settings = Settings(cluster_backend="kubernetes", kube_namespace="default", kube_cluster="digits",
                        data_dir=tmp_path, api_token=TOKEN)
    backend = _NoWatchBackend(settings, configuration=configuration)
    with Facade(settings, backend) as running, http(running.url) as client:
        answer = client.get("/cluster/tasks/task-1")
    assert answer.status_code == 503
    assert "no answer from the API server" in answer.json()["detail"]
