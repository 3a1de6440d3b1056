"""A whole Kubernetes-mode deployment on loopback, for the operator's integration tests.

Real parts: the kopf operator (:func:`legacygpu.operator.app.run_operator`),
its HTTP traffic, the workers' loops (:class:`legacygpu.worker.kube.KubeWorker`
with the real TaskRunner and onnxruntime on the demo model), all talking HTTP
to one API server.

Stand-ins, because the real things cannot run here (no kube-apiserver, no
kubelet on these machines; the e2e tier has the real control plane):
the API server is :class:`legacygpu.operator.emulator.ApiServerEmulator`
(kmock plus resourceVersions, conflicts, the status subresource, label
selectors and garbage collection) and the scheduler plus kubelets are
:class:`legacygpu.operator.simkubelet.SimulatedNodes`, which starts one
worker thread per scheduled pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from kmock import Server

from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.tasks import RetryPolicy
from legacygpu.operator.app import run_operator
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.emulator import ApiServerEmulator
from legacygpu.operator.errors import ApiNotFoundError
from legacygpu.operator.kubeapi import KubeApi, load_configuration
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.simkubelet import SimulatedNodes

NS = "default"

FAST = OperatorConfig(
    namespaces=(NS,),
    resync_seconds=2.0,
    cluster_not_found_grace_seconds=1.0,
    retry_base_seconds=0.2,
    retry_cap_seconds=1.0,
    lease_seconds=3.0,
    renew_seconds=0.5,
)


class WorkerThread:
    """One worker pod's loop on a thread (what the kubelet would run in the container)."""

    def __init__(self, server: str, namespace: str, pod: str, repository: Path) -> None:
        from legacygpu.worker.backends import create_backend
        from legacygpu.worker.kube import KubeWorker
        from legacygpu.worker.runner import TaskRunner

        runner = TaskRunner(ModelRepository(repository), create_backend("onnxruntime"))
        client = kubernetes.client.ApiClient(load_configuration(server=server))
        self.worker = KubeWorker(
            api_client=client, pod_name=pod, namespace=namespace, runner=runner,
            policy=RetryPolicy(0.2, 1.0), watch_timeout=5.0, resync_seconds=2.0,
        )
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop_event,), name=pod, daemon=True)
        self.thread.start()

    def ready(self) -> bool:
        return self.worker.ready.is_set()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


@dataclass
class OperatorHandle:
    task: asyncio.Task[None]
    stop: asyncio.Event
    runtime: OperatorRuntime

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=30)


@dataclass
class Deployment:
    emulator: ApiServerEmulator
    url: str
    api: KubeApi
    repository: Path
    nodes: SimulatedNodes | None = None
    operators: list[OperatorHandle] = field(default_factory=list)

    @property
    def configuration(self) -> kubernetes.client.Configuration:
        return load_configuration(server=self.url)

    async def start_operator(self, config: OperatorConfig = FAST, *, wait_ready: bool = True) -> OperatorHandle:
        stop, ready = asyncio.Event(), asyncio.Event()
        runtime: asyncio.Future[OperatorRuntime] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(
            run_operator(config, self.configuration, stop=stop, ready=ready, runtime_ready=runtime)
        )
        handle = OperatorHandle(task, stop, await runtime)
        self.operators.append(handle)
        if wait_ready:
            await asyncio.wait_for(ready.wait(), timeout=30)
        return handle

    def start_worker(self, namespace: str, pod: str) -> WorkerThread:
        return WorkerThread(self.url, namespace, pod, self.repository)

    # -- objects ---------------------------------------------------------------------------------

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        plural = CLUSTER_PLURAL if manifest["kind"] == "InferenceCluster" else TASK_PLURAL
        return await self.api.create(GROUP, VERSION, plural, manifest["metadata"].get("namespace", NS), manifest)

    async def task(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.api.get_task(NS, name)
        except ApiNotFoundError:
            return None

    async def cluster(self, name: str) -> dict[str, Any] | None:
        return await self.api.get_cluster(NS, name)

    async def pods(self, cluster: str | None = None) -> list[dict[str, Any]]:
        selector = f"legacygpu.io/cluster={cluster}" if cluster else None
        return await self.api.list("", "v1", "pods", NS, label_selector=selector)

    async def events(self, name: str | None = None) -> list[dict[str, Any]]:
        items = await self.api.list("", "v1", "events", NS)
        return [e for e in items if name is None or e.get("involvedObject", {}).get("name") == name]

    async def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        await self.api.patch(GROUP, VERSION, plural, NS, name, {"spec": spec})


async def eventually(check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Await ``check()`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value: {last!r}")


def phase(body: dict[str, Any] | None) -> str | None:
    return ((body or {}).get("status") or {}).get("phase")


def condition(body: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for entry in ((body or {}).get("status") or {}).get("conditions") or ():
        if entry["type"] == type_:
            return dict(entry)
    return {}


def cluster_manifest(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"replicas": 2, "tasksPerWorker": 2, "backend": "onnxruntime"}
    base.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceCluster", "metadata": {"name": name}, "spec": base}


def task_manifest(name: str, cluster: str, inputs: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"clusterRef": cluster, "model": "digits"}
    if inputs is not None:
        body["inputs"] = inputs
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceTask", "metadata": {"name": name}, "spec": body}


@contextlib.asynccontextmanager
async def deployment(repository: Path, *, nodes: dict[str, int] | None = None, workers: bool = True) -> Any:
    """The emulated API server with the CRDs, simulated GPU nodes, and a client; operators are started by tests."""
    async with ApiServerEmulator() as emulator, Server(emulator) as server:
        for crd in all_crds():
            emulator.declare_crd(crd)
        url = str(server.url).rstrip("/")
        api = KubeApi(load_configuration(server=url))
        dep = Deployment(emulator=emulator, url=url, api=api, repository=repository)
        try:
            async with SimulatedNodes(
                url, nodes=nodes or {"gpu-node-1": 4, "gpu-node-2": 4},
                start_worker=dep.start_worker if workers else None,
            ) as sim:
                dep.nodes = sim
                try:
                    yield dep
                finally:
                    for handle in dep.operators:
                        await handle.close()
        finally:
            api.close()
