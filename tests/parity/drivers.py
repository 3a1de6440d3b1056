"""One scenario vocabulary, two backends: what the parity suite drives.

Each driver plays the cluster's processes on a fake clock and answers
:meth:`get` with the facade's own :class:`TaskPublic`, so a scenario written
once asserts the same phases, reasons, history and public fields on both.

* :class:`LocalDriver`: the real :class:`LocalBackend` (SQLite, the
  coordinator's reconcile pass, the start and push of what it placed, with
  a recording channel standing in for the HTTP push, and outcomes reported
  as the worker reports them); a worker is "lost" by letting it miss
  heartbeats.
* :class:`KubeDriver`: real ``InferenceTask`` objects over HTTP on the
  :class:`~legacygpu.testing.emulator.ApiServerEmulator` (this folder) or on
  the real kube-apiserver (``tests/e2e/test_parity_apiserver.py``): status
  subresource, resourceVersion conflicts, and on the real server the CRD's
  schema and CEL rules. The operator's part is its
  pure policy, composed as its reconciler composes it
  (``taskstate.decide``, then ``taskstate.plan_assignments`` over
  ``clusterstate.worker_infos``); the worker's part is the claim and report
  builders ``KubeWorker`` writes (``running_status``, ``report_status``,
  with the same staleness check as ``KubeWorker.finish``). Stand-ins: worker
  pods are :class:`PodView` values (no kubelet here; the e2e tier runs
  pods), and the kopf event plumbing is replaced by an explicit
  :meth:`reconcile` so the fake clock decides every deadline and backoff.

Both drivers complete attempts the way the workers do:
:func:`legacygpu.core.lifecycle.classify` on the error the model raised.
"""

from __future__ import annotations

import datetime
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import httpx
from taskfakes import SERVING, complete, connect, take

from legacygpu.api.backends.kubernetes import KubernetesBackend
from legacygpu.api.backends.local import LocalBackend
from legacygpu.api.schemas import Completion, DeviceInfoPublic, Heartbeat, TaskCreate, TaskPublic, WorkerRegister
from legacygpu.core.config import Settings
from legacygpu.core.errors import ConflictError
from legacygpu.core.kube.client import MERGE_PATCH
from legacygpu.core.kube.contract import (
    API_VERSION,
    GROUP,
    TASK_KIND,
    TASK_PLURAL,
    VERSION,
    assigned_status,
    parse_time,
    report_status,
    running_status,
)
from legacygpu.core.lifecycle import classify
from legacygpu.core.modelcards import ModelCard, ModelRepository, TensorSpec
from legacygpu.core.scheduling import make_strategy
from legacygpu.core.tasks import ASSIGNED_PHASES, Phase, RetryPolicy
from legacygpu.operator.clusterstate import PodView, worker_infos
from legacygpu.operator.taskstate import decide, plan_assignments, scheduled_heads, task_view

HEARTBEAT_TIMEOUT = 5.0
RETRY = RetryPolicy(base_seconds=1.0, cap_seconds=4.0)
INPUTS = [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]
NS = "default"


class Driver(Protocol):
    capacity: int

    async def submit(self, priority: int = 0, *, timeout: int = 600, max_retries: int = 3) -> str: ...
    async def add_worker(self, name: str) -> None: ...
    async def lose_worker(self, name: str) -> None: ...
    async def drain(self, name: str) -> None: ...
    async def advance(self, seconds: float) -> None: ...
    async def reconcile(self) -> None: ...
    async def claim(self, worker: str) -> list[str]: ...
    async def complete(
        self, key: str, worker: str, *, error: Exception | None = None, result: dict[str, Any] | None = None,
        compute_ms: float | None = None, attempt: int | None = None,
    ) -> bool: ...
    async def cancel(self, key: str) -> None: ...
    async def get(self, key: str) -> TaskPublic: ...
    def worker_of(self, key_or_id: str | None) -> str | None: ...


class LocalDriver:
    def __init__(self, tmp_path: Path) -> None:
        self.now = 1_000_000.0
        self.capacity = 1
        settings = Settings(
            data_dir=tmp_path, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT, retry_base_seconds=RETRY.base_seconds,
            retry_cap_seconds=RETRY.cap_seconds, worker_prefetch=1, worker_prefetch_max=1,
            scheduling_strategy="least-loaded",
        )  # a fixed capacity, as the Kubernetes side has: prefetch that follows the model time is local-only
        self.backend = LocalBackend(settings, clock=lambda: self.now, rng=random.Random(0))
        onnx = tmp_path / "dummy.onnx"
        onnx.write_bytes(b"not used by the coordinator")
        card = ModelCard(name="m", inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])])
        ModelRepository(tmp_path / "models").add(card, onnx)
        connect(self.backend)
        self.ids: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.silent: set[str] = set()
        self.claimed: dict[tuple[str, str], int] = {}

    async def submit(self, priority: int = 0, *, timeout: int = 600, max_retries: int = 3) -> str:
        request = TaskCreate.model_validate(
            {"model": "m", "inputs": INPUTS, "priority": priority, "timeout_seconds": timeout,
             "max_retries": max_retries}
        )
        return (await self.backend.submit_task(request)).id

    async def add_worker(self, name: str) -> None:
        self.backend.settings.worker_prefetch = self.backend.settings.worker_prefetch_max = self.capacity
        reply = await self.backend.register_worker(
            WorkerRegister(name=name, device=DeviceInfoPublic(name="dev"), concurrency=1, stats=SERVING)
        )
        self.ids[name], self.names[reply.id] = reply.id, name

    async def lose_worker(self, name: str) -> None:
        self.silent.add(name)
        await self.advance(HEARTBEAT_TIMEOUT + 1)

    async def drain(self, name: str) -> None:
        await self.backend.drain_worker(self.ids[name])

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for name, worker_id in self.ids.items():
            if name not in self.silent:
                await self.backend.heartbeat(worker_id, Heartbeat(stats=SERVING))

    async def reconcile(self) -> None:
        self.backend.reconcile()

    async def claim(self, worker: str) -> list[str]:
        tasks = await take(self.backend, self.ids[worker])  # what was pushed to it
        for task in tasks:
            self.claimed[task.id, worker] = task.attempt
        return [t.id for t in tasks]

    async def complete(
        self, key: str, worker: str, *, error: Exception | None = None, result: dict[str, Any] | None = None,
        compute_ms: float | None = None, attempt: int | None = None,
    ) -> bool:
        outcome = classify(error, worker=worker)  # as LocalWorker._run_task does
        body: dict[str, Any] = {"worker_id": self.ids[worker], "attempt": attempt or self.claimed[key, worker]}
        if outcome.succeeded:
            body.update(result=result or {}, compute_ms=compute_ms)
        else:
            body["error"] = {"reason": outcome.reason, "message": outcome.message, "retryable": outcome.retryable}
        try:
            await complete(self.backend, key, Completion.model_validate(body))
        except ConflictError:
            return False
        return True

    async def cancel(self, key: str) -> None:
        await self.backend.cancel_task(key)

    async def get(self, key: str) -> TaskPublic:
        return await self.backend.get_task(key)

    def worker_of(self, key_or_id: str | None) -> str | None:
        return None if key_or_id is None else self.names[key_or_id]


class KubeDriver:
    def __init__(self, http: httpx.Client, namespace: str = NS) -> None:
        self.http = http
        self.namespace = namespace
        self.capacity = 1
        self.offset = 0.0
        self.base: datetime.datetime | None = None
        self.pods: dict[str, PodView] = {}
        self.rng = random.Random(0)
        self.strategy = make_strategy("least-loaded")
        self.claimed: dict[tuple[str, str], int] = {}
        self.count = 0

    @property
    def now(self) -> datetime.datetime:
        assert self.base is not None
        return self.base + datetime.timedelta(seconds=self.offset)

    def _path(self, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{TASK_PLURAL}"
        return f"{path}/{name}" if name else path

    def _body(self, name: str) -> dict[str, Any]:
        response = self.http.get(self._path(name))
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def _bodies(self) -> Iterator[dict[str, Any]]:
        response = self.http.get(self._path())
        response.raise_for_status()
        return iter(response.json()["items"])

    def _write(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": status}
        response = self.http.patch(
            f"{self._path(body['metadata']['name'])}/status", json=patch, headers={"Content-Type": MERGE_PATCH}
        )
        if response.status_code == 409:
            return False
        response.raise_for_status()
        return True

    async def submit(self, priority: int = 0, *, timeout: int = 600, max_retries: int = 3) -> str:
        self.count += 1
        name = f"t{self.count:02d}"
        spec = {"clusterRef": "c", "model": "m", "inputs": INPUTS, "priority": priority, "timeoutSeconds": timeout,
                "maxRetries": max_retries}
        body = {"apiVersion": API_VERSION, "kind": TASK_KIND, "metadata": {"name": name, "namespace": self.namespace},
                "spec": spec}
        response = self.http.post(self._path(), json=body)
        response.raise_for_status()
        if self.base is None:  # the fake clock starts at the first task's creation
            self.base = parse_time(response.json()["metadata"]["creationTimestamp"])
        await self._decide(only_pending=True)  # the operator admits a task as soon as it sees it
        return name

    async def add_worker(self, name: str) -> None:
        self.pods[name] = PodView(name=name, phase="Running", ready=True, node="n1")

    async def lose_worker(self, name: str) -> None:
        del self.pods[name]
        await self.advance(HEARTBEAT_TIMEOUT + 1)

    async def drain(self, name: str) -> None:
        self.pods[name] = PodView(name=name, phase="Running", ready=True, node="n1", draining=True)
        await self._decide()

    async def advance(self, seconds: float) -> None:
        self.offset += seconds

    async def _decide(self, *, only_pending: bool = False) -> None:
        bodies = list(self._bodies())
        views = [task_view(body) for body in bodies]
        heads = scheduled_heads(views)  # as the reconciler does: a lost pod charges only its head
        for body, view in zip(bodies, views, strict=True):
            if only_pending and view.phase != Phase.PENDING:
                continue
            action = decide(
                view, cluster_exists=True, pods=self.pods, now=self.now, policy=RETRY, rng=self.rng, heads=heads,
            )
            if action is not None and action.status is not None:
                self._write(body, dict(action.status))

    async def reconcile(self) -> None:
        await self._decide()
        bodies = {b["metadata"]["name"]: b for b in self._bodies()}
        views = [task_view(b) for b in bodies.values()]
        assigned = Counter(v.worker for v in views if v.phase in ASSIGNED_PHASES and v.worker)
        workers = worker_infos(list(self.pods.values()), assigned, self.capacity)
        for view, worker in plan_assignments(views, workers, self.strategy, self.now):
            body = bodies[view.name]
            self._write(body, dict(assigned_status(body["status"], pod=worker.id, node=None, now=self.now)))

    async def claim(self, worker: str) -> list[str]:
        for body in sorted(self._bodies(), key=lambda b: b["metadata"]["name"]):
            status = body.get("status") or {}
            if status.get("phase") == Phase.SCHEDULED and (status.get("workerRef") or {}).get("pod") == worker:
                running = running_status(status, pod=worker, now=self.now)
                if self._write(body, dict(running)):
                    self.claimed[body["metadata"]["name"], worker] = running["attempts"]
                    return [body["metadata"]["name"]]
        return []

    async def complete(
        self, key: str, worker: str, *, error: Exception | None = None, result: dict[str, Any] | None = None,
        compute_ms: float | None = None, attempt: int | None = None,
    ) -> bool:
        body = self._body(key)
        status = body.get("status") or {}
        attempt = attempt or self.claimed[key, worker]
        current = (
            status.get("phase") == Phase.RUNNING and int(status.get("attempts") or 0) == attempt
            and (status.get("workerRef") or {}).get("pod") == worker
        )
        if not current:  # KubeWorker.finish drops the result of an attempt that is no longer current
            return False
        outcome = classify(error, worker=worker)
        patch = report_status(
            status, outcome, created=body["metadata"]["creationTimestamp"], max_retries=body["spec"]["maxRetries"],
            now=self.now, policy=RETRY, result=(result or {}) if outcome.succeeded else None,
            compute_ms=compute_ms if outcome.succeeded else None,
        )
        return self._write(body, dict(patch))

    async def cancel(self, key: str) -> None:
        response = self.http.patch(self._path(key), json={"spec": {"cancel": True}},
                                   headers={"Content-Type": MERGE_PATCH})
        response.raise_for_status()
        await self._decide()

    async def get(self, key: str) -> TaskPublic:
        return KubernetesBackend._task_public(self._body(key))

    def worker_of(self, key_or_id: str | None) -> str | None:
        return key_or_id

    def close(self) -> None:
        self.http.close()
