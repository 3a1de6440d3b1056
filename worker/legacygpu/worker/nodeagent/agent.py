"""The node agent: health loop, device-plugin server, kubelet registration and node labels.

Design: one asyncio program. :meth:`NodeAgent.run` first runs one health
round so the first ``ListAndWatch`` answer is already true, then runs two
loops until ``stop`` is set:

* the **health loop** runs a round every ``health_interval`` seconds, feeds
  the :class:`~.inventory.DeviceInventory` (which wakes ``ListAndWatch``
  streams on change) and, with a :class:`~.labeller.NodeLabeller`, re-applies
  the node labels when they change;
* the **serve loop** waits for ``kubelet.sock``, starts a
  :class:`~.plugin.PluginServer` (serve first), registers it (then register,
  retrying with backoff while the same kubelet is up), and then watches both
  sockets: a recreated ``kubelet.sock`` or a deleted plugin socket ends this
  serving lifetime, and the loop starts a fresh server and registers again.

With ``metrics_port`` set, the per-GPU gauges of :mod:`.metrics` are served
on ``/metrics`` from before the first round until the agent stops; a port
that cannot be bound is logged and the agent serves the kubelet regardless.

On ``stop`` (SIGTERM or SIGINT in :func:`run_agent`) the server ends its
streams, stops with a grace period and removes its socket; :func:`run_agent`
returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from legacygpu.worker.nodeagent.errors import LabelError, PluginServerError, RegistrationError
from legacygpu.worker.nodeagent.health import CHECKS, CardStatus, HealthChecker
from legacygpu.worker.nodeagent.inventory import DeviceInventory
from legacygpu.worker.nodeagent.labeller import NodeLabeller, compute_labels
from legacygpu.worker.nodeagent.metrics import NodeAgentMetrics
from legacygpu.worker.nodeagent.openclprobe import OpenCLProbe, PyOpenCLProbe
from legacygpu.worker.nodeagent.plugin import PluginServer, check_socket_path, socket_identity
from legacygpu.worker.nodeagent.registration import SocketWatch, register, wait_for_socket
from legacygpu.worker.nodeagent.v1beta1 import DEVICE_PLUGIN_PATH, KUBELET_SOCKET

__all__ = ["DEFAULT_RESOURCE_NAME", "AgentConfig", "NodeAgent", "run_agent", "socket_name_for"]

logger = logging.getLogger(__name__)

DEFAULT_RESOURCE_NAME = "legacygpu.io/gpu"


def socket_name_for(resource_name: str) -> str:
    """``legacygpu.io/gpu`` -> ``legacygpu.io_gpu.sock``: one socket per resource name."""
    return resource_name.replace("/", "_") + ".sock"


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``legacygpu node-agent`` can be told; defaults are a real node's paths."""

    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    kubelet_dir: Path = Path(DEVICE_PLUGIN_PATH)
    resource_name: str = DEFAULT_RESOURCE_NAME
    socket_name: str | None = None
    health_interval: float = 10.0
    health_checks: Sequence[str] = CHECKS
    replicas_per_gpu: int = 1
    opencl_device_types: Sequence[str] = ("gpu",)
    opencl_timeout: float = 30.0
    watch_interval: float = 0.5
    grace: float = 5.0
    register_timeout: float = 10.0
    max_register_backoff: float = 30.0
    metrics_port: int | None = None
    """Serve ``/metrics`` on this port (0 picks a free one); None serves none."""
    metrics_host: str = "0.0.0.0"

    @property
    def socket_path(self) -> Path:
        return self.kubelet_dir / (self.socket_name or socket_name_for(self.resource_name))

    @property
    def kubelet_socket(self) -> Path:
        return self.kubelet_dir / KUBELET_SOCKET


class NodeAgent:
    """Runs the health loop and the device-plugin serve loop for one node."""

    def __init__(self, config: AgentConfig, *, probe: OpenCLProbe | None = None,
                 labeller: NodeLabeller | None = None) -> None:
        self.config = config
        check_socket_path(config.socket_path)
        check_socket_path(config.kubelet_socket)
        if probe is None and "opencl" in config.health_checks:
            probe = PyOpenCLProbe(config.opencl_device_types)
        self.checker = HealthChecker(config.sysfs_root, config.dev_root, checks=config.health_checks,
                                     probe=probe, opencl_timeout=config.opencl_timeout)
        self.inventory = DeviceInventory(config.replicas_per_gpu)
        self.labeller = labeller
        self.registrations = 0
        self.labels: dict[str, str] | None = None
        self.server: PluginServer | None = None
        self.metrics = NodeAgentMetrics(lambda: self.checker.last, lambda: self.registrations)

    async def health_round(self) -> dict[str, CardStatus]:
        statuses = await self.checker.check_round_async()
        self.inventory.update(statuses)
        labels = compute_labels(statuses)
        if labels != self.labels:
            logger.info("node labels: %s", labels)
            self.labels = labels
        if self.labeller is not None:
            try:
                await asyncio.to_thread(self.labeller.apply, labels)
            except LabelError as exc:
                logger.warning("%s (will retry next round)", exc)
        return statuses

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.metrics_port is not None:
            try:
                port = self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
            except OSError as exc:  # the kubelet needs the device plugin more than Prometheus needs gauges
                logger.error("cannot serve /metrics on %s:%d (%s); GPU metrics are off, the device plugin runs on",
                             self.config.metrics_host, self.config.metrics_port, exc.strerror or exc)
            else:
                logger.info("serving /metrics on %s:%d", self.config.metrics_host, port)
        try:
            await self.health_round()
            health = asyncio.create_task(self._health_loop(stop), name="legacygpu-health")
            try:
                await self._serve_loop(stop)
            finally:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
        finally:
            self.metrics.close()

    async def _health_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._sleep(stop, self.config.health_interval)
            if stop.is_set():
                return
            try:
                await self.health_round()
            except Exception:  # keep serving whatever happens in one round
                logger.exception("health round failed")

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    async def _register(self, kubelet_identity: tuple[int, int, int], stop: asyncio.Event) -> bool:
        """Register, retrying with backoff while the same kubelet is up; False if it went away."""
        backoff = 1.0
        while not stop.is_set() and socket_identity(self.config.kubelet_socket) == kubelet_identity:
            try:
                await register(self.config.kubelet_socket, self.config.socket_path.name,
                               self.config.resource_name, timeout=self.config.register_timeout)
            except RegistrationError as exc:
                logger.error("%s; retrying in %gs", exc, backoff)
                await self._sleep(stop, backoff)
                backoff = min(backoff * 2, self.config.max_register_backoff)
                continue
            self.registrations += 1
            return True
        return False

    async def _serve_loop(self, stop: asyncio.Event) -> None:
        watch = SocketWatch(self.config.kubelet_socket, self.config.watch_interval)
        while not stop.is_set():
            identity = await wait_for_socket(self.config.kubelet_socket, stop, self.config.watch_interval)
            if identity is None:
                return
            server = PluginServer(self.inventory, self.config.socket_path, self.config.dev_root,
                                  grace=self.config.grace)
            try:
                await server.start()
            except PluginServerError as exc:
                logger.error("%s; retrying", exc)
                await self._sleep(stop, 1.0)
                continue
            self.server = server
            try:
                if await self._register(identity, stop):
                    reason = await watch.wait(identity, server.socket_intact, stop)
                else:
                    reason = "stop" if stop.is_set() else "kubelet restarted"
            finally:
                await server.stop()
                self.server = None
            if reason != "stop":
                logger.info("%s: restarting the plugin server and registering again", reason)


def run_agent(config: AgentConfig, *, labeller: NodeLabeller | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code (0 on a clean stop)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await NodeAgent(config, labeller=labeller).run(stop)
        logger.info("node agent stopped")

    asyncio.run(main())
    return 0
