"""The kubelet's device-manager side for the simulated nodes: device plugins set the GPU capacity.

Design: a kubelet serves ``Registration`` on ``<device-plugin dir>/kubelet.sock``; a plugin (our
node agent) registers its resource name and socket; the kubelet dials the plugin, keeps a
``ListAndWatch`` stream open and writes the Node's ``status.capacity``/``allocatable`` for that
resource from each list (all devices / the healthy ones). :class:`DeviceManager` does this for
every simulated node, in the simulated host file system (:mod:`e2ecluster.nodefs`), with
:class:`legacygpu.testing.fake_kubelet.FakeKubelet` (the node agent's tests use the same one), on
one asyncio loop in a thread of the simulator:

- on each list, the Node's capacity for the resource is the number of devices and allocatable the
  number of ``Healthy`` ones (a strategic merge patch: other resources are untouched), and
  :meth:`DeviceManager.advertised` returns it, so the simulator hands out GPU indices below it;
- the registrations and the latest list are written to ``<node>/kubelet-devices.json`` (what a
  kubelet keeps in its checkpoint), for tests and for people;
- when the latest stream ends (the agent's pod went), the node goes back to the simulator's fixed
  count. A real kubelet would keep the capacity and report 0 allocatable; the shared e2e cluster
  needs its GPUs back for the tests that run without an agent.

Unix socket paths are limited to 107 bytes, which a worktree's ``.cache/e2e-cluster/nodes/...``
can exceed, so each node's device-plugin folder is reached through a short symlink under the
temporary folder (the kernel resolves it for bind and connect alike).

What it does not do: ``Allocate`` (worker pods get the simulator's fake PCI addresses, see
:mod:`e2ecluster.podenv`), ``GetPreferredAllocation``, the checkpoint across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2ecluster.cluster import NodePool
from e2ecluster.nodefs import SIMULATED_PATHS
from legacygpu.testing.fake_kubelet import DeviceView, EndHook, FakeKubelet, ListHook

__all__ = ["STATE_FILE", "DeviceManager", "short_dir"]

log = logging.getLogger(__name__)

SMP = "application/strategic-merge-patch+json"
STATE_FILE = "kubelet-devices.json"
PLUGIN_DIR = SIMULATED_PATHS["/var/lib/kubelet/device-plugins"]


def short_dir(root: Path) -> Path:
    """A short folder under the temporary folder, one per cluster state folder, for socket links."""
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"e2e-dp-{digest}"


class DeviceManager:
    """One fake kubelet device manager per simulated node, on a loop in a thread of its own."""

    def __init__(self, root: Path, pool: NodePool, names: list[str], api: Callable[[], client.ApiClient]) -> None:
        self.root = root
        self.pool = pool
        self.names = names
        self.core = client.CoreV1Api(api())
        self._advertised: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device-manager", daemon=True)

    # -- what the simulator asks -------------------------------------------------------------
    def advertised(self, node: str) -> int | None:
        """The healthy devices a plugin advertises on ``node`` now, or None when none is registered."""
        with self._lock:
            return self._advertised.get(node)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._started.wait(30)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("device manager stopped")
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        links = short_dir(self.root)
        links.mkdir(mode=0o700, parents=True, exist_ok=True)
        kubelets = []
        for node in self.names:
            link = links / node
            link.unlink(missing_ok=True)
            link.symlink_to(self.root / "nodes" / node / PLUGIN_DIR, target_is_directory=True)
            kubelet = FakeKubelet(link)
            kubelet.on_list = self._on_list_hook(node, kubelet)
            kubelet.on_end = self._on_end_hook(node, kubelet)
            await kubelet.start()
            kubelets.append(kubelet)
        log.info("device manager: kubelet.sock served for %s", ", ".join(self.names))
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            for kubelet in kubelets:
                await kubelet.stop()

    # -- the kubelet's reaction to a plugin ------------------------------------------------------
    def _on_list_hook(self, node: str, kubelet: FakeKubelet) -> ListHook:
        async def on_list(devices: list[DeviceView]) -> None:
            healthy = sum(1 for d in devices if d.health == "Healthy")
            with self._lock:
                self._advertised[node] = healthy
            await self._set_capacity(node, len(devices), healthy)
            last = kubelet.registrations[-1]
            registration = {"version": last.version, "endpoint": last.endpoint, "resourceName": last.resource_name}
            self._record(node, {"registration": registration, "stream_end": None,
                                "devices": [{"id": d.id, "health": d.health} for d in devices]})  # fmt: skip
            log.info("node %s: plugin advertises %d devices, %d healthy", node, len(devices), healthy)

        return on_list

    def _on_end_hook(self, node: str, kubelet: FakeKubelet) -> EndHook:
        async def on_end(code: grpc.StatusCode) -> None:
            if len(kubelet.registrations) > len(kubelet.stream_ends):
                return  # a newer registration has its own stream
            with self._lock:
                self._advertised.pop(node, None)
            await self._set_capacity(node, self.pool.gpus, self.pool.gpus)
            self._record(node, {"devices": [], "stream_end": code.name})
            log.info("node %s: plugin stream ended (%s); back to %d simulated GPUs", node, code.name, self.pool.gpus)

        return on_end

    async def _set_capacity(self, node: str, capacity: int, allocatable: int) -> None:
        resource = self.pool.resource
        body = {"status": {"capacity": {resource: str(capacity)}, "allocatable": {resource: str(allocatable)}}}
        try:
            await asyncio.to_thread(self.core.patch_node_status, node, body, _content_type=SMP)
        except ApiException as exc:
            log.warning("node %s: setting %s capacity: %s", node, resource, exc)

    def _record(self, node: str, update: dict[str, object]) -> None:
        path = self.root / "nodes" / node / STATE_FILE
        state: dict[str, object] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
        state.update(update)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(state, indent=2) + "\n")
        partial.replace(path)  # atomic: a reader never sees a half-written file
