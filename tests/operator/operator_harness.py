"""A whole Kubernetes-mode deployment on loopback, for the operator's integration tests.

Real parts: the kopf operator (:func:`legacygpu.operator.app.run_operator`),
its HTTP traffic, the workers' loops (:class:`legacygpu.worker.kube.KubeWorker`
with the real TaskRunner and onnxruntime on the demo model), all talking HTTP
to one API server.

Stand-ins, because the real things cannot run here (no kube-apiserver, no
kubelet on these machines; the e2e tier has the real control plane):
the API server is :class:`legacygpu.testing.emulator.ApiServerEmulator`
(kmock plus resourceVersions, conflicts, the status subresource, label
selectors and garbage collection) and the scheduler plus kubelets are
:class:`legacygpu.testing.simkubelet.SimulatedNodes`, which starts one
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
import yaml

from legacygpu.core.kube.client import KubeApi, load_configuration
from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION
from legacygpu.core.kube.errors import ApiNotFoundError
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.tasks import RetryPolicy
from legacygpu.operator.app import run_operator
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.testing.emulator import EmulatorThread
from legacygpu.testing.simkubelet import SimulatedNodes

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


class GatedRunner:
    """The real TaskRunner behind a gate the test opens and closes.

    A stand-in for a slow model: the digits model answers in milliseconds, and burning
    seconds of CPU on a shared 2-core machine to keep a task ``Running`` would be wasteful.
    """

    def __init__(self, runner: Any, gate: threading.Event) -> None:
        self.runner = runner
        self.gate = gate
        self.backend = runner.backend

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.wait()
        return self.runner.run(*args, **kwargs)

    def loaded_models(self) -> list[str]:
        return self.runner.loaded_models()  # type: ignore[no-any-return]


class WorkerThread:
    """One worker pod's loop on a thread (what the kubelet would run in the container)."""

    def __init__(
        self, server: str, namespace: str, pod: str, repository: Path, gate: threading.Event, **options: Any
    ) -> None:
        from legacygpu.worker.backends import create_backend
        from legacygpu.worker.kube import KubeWorker
        from legacygpu.worker.runner import TaskRunner

        runner = GatedRunner(TaskRunner(ModelRepository(repository), create_backend("onnxruntime")), gate)
        client = kubernetes.client.ApiClient(load_configuration(server=server))
        self.worker = KubeWorker(
            api_client=client, pod_name=pod, namespace=namespace, runner=runner,
            policy=RetryPolicy(0.2, 1.0), watch_timeout=5.0, resync_seconds=2.0, **options,
        )
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop_event,), name=pod, daemon=True)
        self.thread.start()

    def ready(self) -> bool:
        return self.worker.ready.is_set()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

    def kill(self) -> None:
        """Play a killed process: a thread cannot be killed, so it is cut off from the API instead.

        Whatever the loop is running finishes, but writes nothing, as a dead container would.
        """

        def dead(*_: Any, **__: Any) -> bool:
            return False

        self.worker.finish = dead  # type: ignore[method-assign]
        self.worker.claim = lambda *_: None  # type: ignore[method-assign]
        self.worker.ready.clear()
        self.stop_event.set()


class OperatorHandle:
    """One operator on its own thread and event loop, as a separate process would be.

    (kopf, when it exits, waits for every task spawned in its loop while it ran; a test's
    teardown task must not be one of them.)
    """

    def __init__(self, config: OperatorConfig, configuration: kubernetes.client.Configuration) -> None:
        self.config = config
        self.configuration = configuration
        self.runtime: OperatorRuntime | None = None
        self.ready = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self._thread.start()
        self._started.wait(timeout=30)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            runtime: asyncio.Future[OperatorRuntime] = self._loop.create_future()
            runtime.add_done_callback(lambda f: setattr(self, "runtime", f.result()))
            self._loop.create_task(self._relay(ready))
            self._started.set()
            await run_operator(self.config, self.configuration, stop=self._stop, ready=ready, runtime_ready=runtime)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()
            self.done.set()

    async def _relay(self, ready: asyncio.Event) -> None:
        await ready.wait()
        self.ready.set()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(self.ready.wait, timeout)
        if not self.ready.is_set():
            raise AssertionError(f"operator not ready after {timeout}s (error: {self.error!r})")

    async def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self.done.is_set():
            self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, 30)


@dataclass
class Deployment:
    emulator: EmulatorThread
    url: str
    api: KubeApi
    repository: Path
    nodes: SimulatedNodes | None = None
    operators: list[OperatorHandle] = field(default_factory=list)
    worker_options: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, WorkerThread] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    """Workers run tasks only while this is set (it is, unless a test clears it)."""

    def __post_init__(self) -> None:
        self.gate.set()

    @property
    def configuration(self) -> kubernetes.client.Configuration:
        return load_configuration(server=self.url)

    async def start_operator(self, config: OperatorConfig = FAST, *, wait_ready: bool = True) -> OperatorHandle:
        handle = OperatorHandle(config, self.configuration)
        self.operators.append(handle)
        if wait_ready:
            await handle.wait_ready()
        return handle

    def start_worker(self, namespace: str, pod: str) -> WorkerThread:
        worker = WorkerThread(self.url, namespace, pod, self.repository, self.gate, **self.worker_options)
        self.workers[pod] = worker
        return worker

    async def kill_worker(self, pod: str) -> None:
        """The worker process in ``pod`` dies and the kubelet reports the pod Failed."""
        self.workers[pod].kill()
        assert self.nodes is not None
        await self.nodes.fail_pod(NS, pod)

    async def apply_file(self, path: Path) -> list[dict[str, Any]]:
        """Create every object in a YAML file, as ``kubectl apply -f`` would for new objects."""
        created = []
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] == "ConfigMap":
                created.append(await self.api.create("", "v1", "configmaps", NS, doc))
            else:
                created.append(await self.create(doc))
        return created

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


async def events_when(
    dep: Deployment, name: str, check: Callable[[list[dict[str, Any]]], bool], *, what: str
) -> list[dict[str, Any]]:
    """The Events about ``name`` once ``check`` accepts them.

    The operator posts Events through kopf's queue, so they can arrive after the status
    write a test waited for; reading them once would race.
    """

    async def ready() -> list[dict[str, Any]] | None:
        events = await dep.events(name)
        return events if check(events) else None

    return await eventually(ready, what=what)  # type: ignore[no-any-return]


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
    with EmulatorThread(all_crds()) as server:
        api = KubeApi(load_configuration(server=server.url))
        dep = Deployment(emulator=server, url=server.url, api=api, repository=repository)
        try:
            async with SimulatedNodes(
                server.url, nodes=nodes or {"gpu-node-1": 4, "gpu-node-2": 4},
                start_worker=dep.start_worker if workers else None,
            ) as sim:
                dep.nodes = sim
                try:
                    yield dep
                finally:
                    dep.gate.set()
                    for handle in dep.operators:
                        await handle.close()
        finally:
            api.close()
