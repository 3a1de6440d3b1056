"""A stand-in for the scheduler and the kubelets, for tests and benchmarks without a cluster.

There is no kubelet on the development machines, so something must play
the node side against the API (emulated or real): :class:`SimulatedNodes`
polls the pods over HTTP like any client and, for each new pod,

* **schedules** it onto a simulated GPU node with enough free devices of the
  requested resource, or marks it ``PodScheduled=False`` with the
  scheduler's own wording (``0/2 nodes are available: 2 Insufficient
  legacygpu.io/gpu.``) when none fits;
* **starts** it: calls ``start_worker(namespace, pod)``, which runs a real
  worker loop for that pod name (a thread in tests), and reports
  ``Running``/``Ready`` once the worker says it is ready;
* **stops** the worker when the pod is deleted, freeing the devices.

Tests use :meth:`fail_pod` and :meth:`unready_pod` to play a crashing
container or a failing readiness probe. The simulation writes through the
status subresource exactly as a kubelet would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from legacygpu.core.kube.contract import DEFAULT_DEVICE_RESOURCE, format_time, now_utc

__all__ = ["SimulatedNodes", "WorkerHandle"]

log = logging.getLogger(__name__)


class WorkerHandle(Protocol):
    """What ``start_worker`` returns: a running worker for one pod."""

    def ready(self) -> bool: ...

    def stop(self) -> None: ...


@dataclass
class _Node:
    name: str
    capacity: int
    used: dict[str, int] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.capacity - sum(self.used.values())


class SimulatedNodes:
    """Schedules and runs pods on ``nodes`` (name → device count) until closed."""

    def __init__(
        self,
        server: str,
        *,
        nodes: dict[str, int] | None = None,
        resource: str = DEFAULT_DEVICE_RESOURCE,
        start_worker: Callable[[str, str], WorkerHandle] | None = None,
        interval: float = 0.05,
    ) -> None:
        self.server = server.rstrip("/")
        self.nodes = {name: _Node(name, gpus) for name, gpus in (nodes or {"gpu-node-1": 8}).items()}
        self.resource = resource
        self.start_worker = start_worker
        self.interval = interval
        self.workers: dict[tuple[str, str], WorkerHandle] = {}
        self.failed: set[tuple[str, str]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> SimulatedNodes:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(asyncio.to_thread(h.stop) for h in self.workers.values()), *self._stopping)
        self.workers.clear()
        if self._session is not None:
            await self._session.close()

    async def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert self._session is not None
        url = f"{self.server}/api/v1/namespaces/{namespace}/pods/{name}/status"
        async with self._session.patch(
            url, json={"status": status}, headers={"Content-Type": "application/merge-patch+json"}
        ) as response:
            if response.status >= 400 and response.status != 404:
                log.warning("pod status patch %s/%s: %s", namespace, name, response.status)

    async def _bind(self, namespace: str, name: str, node: str) -> None:
        assert self._session is not None
        url = f"{self.server}/api/v1/namespaces/{namespace}/pods/{name}"
        async with self._session.patch(
            url, json={"spec": {"nodeName": node}}, headers={"Content-Type": "application/merge-patch+json"}
        ):
            pass

    def _request(self, pod: dict[str, Any]) -> int:
        total = 0
        for container in (pod.get("spec") or {}).get("containers") or ():
            limits = (container.get("resources") or {}).get("limits") or {}
            requests = (container.get("resources") or {}).get("requests") or {}
            total += int(limits.get(self.resource) or requests.get(self.resource) or 0)
        return total

    async def _loop(self) -> None:
        assert self._session is not None
        while True:
            try:
                async with self._session.get(f"{self.server}/api/v1/pods") as response:
                    pods = (await response.json()).get("items") or [] if response.status == 200 else []
                await self._step(pods)
            except (aiohttp.ClientError, ValueError) as exc:
                log.debug("simulated nodes: %s", exc)
            await asyncio.sleep(self.interval)

    async def _step(self, pods: list[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            if meta.get("deletionTimestamp"):
                await self._release(key)
                continue
            if key in self.failed:
                continue
            node = (pod.get("spec") or {}).get("nodeName")
            if node is None:
                await self._schedule(pod, key)
            elif key not in self.workers and self.start_worker is not None:
                self.workers[key] = await asyncio.to_thread(self.start_worker, *key)
            elif key in self.workers:
                await self._report(pod, key)
        for key in [k for k in list(self.workers) if k not in seen]:
            await self._release(key)
        for node in self.nodes.values():
            for key in [k for k in node.used if k not in seen]:
                del node.used[key]

    async def _schedule(self, pod: dict[str, Any], key: tuple[str, str]) -> None:
        need = self._request(pod)
        fits = [n for n in self.nodes.values() if n.free >= need]
        if not fits:
            short = sum(1 for n in self.nodes.values() if n.free < need)
            message = f"0/{len(self.nodes)} nodes are available: {short} Insufficient {self.resource}."
            conditions = (pod.get("status") or {}).get("conditions") or []
            if not any(c.get("type") == "PodScheduled" and c.get("message") == message for c in conditions):
                await self._patch_status(*key, {
                    "phase": "Pending",
                    "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": message, "lastTransitionTime": format_time(now_utc()),
                    }],
                })
            return
        node = max(fits, key=lambda n: (n.free, n.name))
        node.used[key] = need
        await self._bind(*key, node.name)
        now = format_time(now_utc())
        await self._patch_status(*key, {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
        })

    async def _report(self, pod: dict[str, Any], key: tuple[str, str]) -> None:
        ready = await asyncio.to_thread(self.workers[key].ready)
        status = pod.get("status") or {}
        current = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
        want = "True" if ready else "False"
        if status.get("phase") == "Running" and current.get("Ready") == want:
            return
        now = format_time(now_utc())
        await self._patch_status(*key, {
            "phase": "Running",
            "startTime": status.get("startTime") or now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": want, "lastTransitionTime": now},
            ],
        })

    async def _release(self, key: tuple[str, str]) -> None:
        await self._stop(key)
        for node in self.nodes.values():
            node.used.pop(key, None)

    async def fail_pod(self, namespace: str, name: str, message: str = "container exited with code 137") -> None:
        """Play a worker that died: the pod is reported ``Failed``, then its worker is stopped."""
        key = (namespace, name)
        self.failed.add(key)
        now = format_time(now_utc())
        await self._patch_status(namespace, name, {
            "phase": "Failed", "message": message,
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
        })
        await self._stop(key)

    async def unready_pod(self, namespace: str, name: str) -> None:
        """Play a failing readiness probe: the pod stays but is not Ready, and its worker stops."""
        key = (namespace, name)
        self.failed.add(key)
        now = format_time(now_utc())
        await self._patch_status(namespace, name, {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
            ],
        })
        await self._stop(key)

    async def _stop(self, key: tuple[str, str]) -> None:
        """Stop a pod's worker in the background (a busy worker finishes its task first)."""
        handle = self.workers.pop(key, None)
        if handle is not None:
            stopping = asyncio.ensure_future(asyncio.to_thread(handle.stop))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
