"""The facade's Kubernetes backend: the same REST API, WebSocket events and CLI, over the custom resources.

Real: the facade (FastAPI on uvicorn, loopback HTTP), the CLI, the operator and the worker loops.
Stand-ins (see operator_harness): the API server emulator and the simulated nodes.

The facade is built as a user gets it: ``create_app(settings)`` with
``cluster_backend="kubernetes"``, finding the API server through ``KUBECONFIG``.
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
import yaml
from click.testing import CliRunner
from operator_harness import Deployment, cluster_manifest, eventually, phase

from legacygpu.api.app import create_app
from legacygpu.api.backends.base import ClusterBackend
from legacygpu.api.backends.kubernetes import KubernetesBackend
from legacygpu.cli import main
from legacygpu.core.config import Settings
from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION

REPO = Path(__file__).resolve().parents[2]
TOKEN = "facade-test-token-0123456789"
ADMIN_TOKEN = "facade-test-admin-token-0123456789"


class Facade:
    """The facade app served by uvicorn on a free loopback port, on its own thread."""

    def __init__(self, settings: Settings, backend: ClusterBackend | None = None) -> None:
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


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig whose current context is ``server`` (the emulator needs no credentials)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
    }))
    return path


@pytest.fixture
async def facade(
    dep: Deployment, tmp_path: Path, demo_repository: Path, monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Facade]:
    """The facade on the Kubernetes backend, chosen and pointed at the API server by configuration only."""
    shutil.copytree(demo_repository, tmp_path / "data" / "models")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", dep.url)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = Settings(
        cluster_backend="kubernetes", kube_namespace="default", kube_cluster="digits",
        data_dir=tmp_path / "data", api_token=TOKEN, admin_token=ADMIN_TOKEN,
    )
    await dep.start_operator()
    await dep.create(cluster_manifest("digits", replicas=2))

    async def ready() -> bool:
        body = await dep.cluster("digits")
        return ((body or {}).get("status") or {}).get("readyWorkers") == 2

    await eventually(ready, what="2 ready workers")
    with Facade(settings) as running:
        def kubernetes_workers() -> Any:  # the backend the settings name, on the server KUBECONFIG names
            health = httpx.get(f"{running.url}/cluster/health", timeout=30).json()
            return health if health["workers_active"] == 2 else None

        health = await eventually(lambda: asyncio.to_thread(kubernetes_workers), what="the facade on the 2 workers")
        assert health["backend"] == "kubernetes"
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
        assert client.post("/cluster/workers/register", json={"name": "x"}).status_code == 403  # the join role's
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # allowed to register, but pods are Kubernetes' workers
        assert client.post("/cluster/workers/register", json={"name": "x"}, headers=admin).status_code == 409
        assert client.get("/cluster/tasks/task-does-not-exist").status_code == 404

        good = {"model": "digits", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                               "data": [0.0] * 64}]}
        refused = client.post("/cluster/tasks/submit-many", json={"tasks": [good, {**good, "model": "nope"}]})
        assert refused.status_code == 422 and refused.json()["detail"].startswith("tasks[1]: ")
        assert client.get("/cluster/tasks").json()["count"] == 1, "a refused submit-many creates no task"
        many = client.post("/cluster/tasks/submit-many", json={"tasks": [good, good, good]})
        assert many.status_code == 201 and many.json()["count"] == 3
    for created in many.json()["data"]:  # one InferenceTask each
        body = await dep.task(created["id"])
        assert body is not None and body["spec"]["clusterRef"] == "digits"


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
        await dep.api.delete(GROUP, VERSION, TASK_PLURAL, "default", task_id)  # as kubectl delete would

        def deleted_event() -> bool:
            return any(e["type"] == "task.deleted" and e["object"]["id"] == task_id for e in list(received))

        await eventually(deleted_event, what="a task.deleted event for the deleted task")
        assert client.get("/cluster/tasks").json()["count"] == 0

        await dep.patch_spec(CLUSTER_PLURAL, "digits", {"suspend": False})

        def two_active() -> bool:
            data = client.get("/cluster/workers").json()["data"]
            return len(data) == 2 and all(w["state"] == "active" for w in data)

        await eventually(lambda: asyncio.to_thread(two_active), timeout=30, what="workers back")
        worker = client.get("/cluster/workers").json()["data"][0]["id"]
        assert client.post(f"/cluster/workers/{worker}/drain").status_code == 403  # draining is the admin's
        drained = client.post(f"/cluster/workers/{worker}/drain", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
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


async def test_the_facade_follows_the_inference_cluster(facade: Facade, dep: Deployment) -> None:
    flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    with http(facade.url) as client:
        assert {w["concurrency"] for w in client.get("/cluster/workers").json()["data"]} == {2}
        await dep.patch_spec(CLUSTER_PLURAL, "digits", {"tasksPerWorker": 3})

        def concurrency_three() -> bool:
            data = client.get("/cluster/workers").json()["data"]
            return bool(data) and {w["concurrency"] for w in data} == {3}

        await eventually(lambda: asyncio.to_thread(concurrency_three), what="the new tasksPerWorker in /workers")

        await dep.api.delete(GROUP, VERSION, CLUSTER_PLURAL, "default", "digits")
        await eventually(lambda: _cluster_gone(dep), what="the InferenceCluster deleted")

        def refused() -> httpx.Response | None:  # until the facade has seen the deletion through (not 201)
            answer = client.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [flat]})
            return answer if "does not exist" in answer.text else None

        answer = await eventually(lambda: asyncio.to_thread(refused), what="submit refused without the cluster")
    assert answer.status_code == 409 and "InferenceCluster 'digits'" in answer.json()["detail"]


async def _cluster_gone(dep: Deployment) -> bool:
    return await dep.cluster("digits") is None




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
