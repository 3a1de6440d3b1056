"""Registering with the kubelet, and noticing when the kubelet restarts.

Design: the kubelet serves the ``Registration`` service on
``<device-plugin dir>/kubelet.sock``. :func:`register` dials it and sends our
socket's file name, the resource name and our options; the kubelet answers and
then dials our socket to start ``ListAndWatch``. When the kubelet restarts it
recreates ``kubelet.sock`` (and wipes the other sockets in the directory),
forgetting every plugin, so :class:`SocketWatch` polls the (device, inode)
identity of both sockets every ``interval`` seconds (0.5 s by default; polling
needs no inotify and sees a replaced file even when its name never went
missing between two polls). The agent restarts its server and registers again
on any change (see :mod:`.agent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from legacygpu.worker.nodeagent.errors import RegistrationError
from legacygpu.worker.nodeagent.plugin import plugin_options, socket_identity
from legacygpu.worker.nodeagent.v1beta1 import VERSION, api_pb2, api_pb2_grpc

__all__ = ["SocketWatch", "register", "wait_for_socket"]

logger = logging.getLogger(__name__)


async def register(kubelet_socket: Path, endpoint: str, resource_name: str, *, timeout: float = 10.0) -> None:
    """Send ``Register`` to the kubelet; raise :class:`RegistrationError` if it fails or refuses."""
    request = api_pb2.RegisterRequest(
        version=VERSION, endpoint=endpoint, resource_name=resource_name, options=plugin_options()
    )
    try:
        async with grpc.aio.insecure_channel(f"unix:{kubelet_socket}") as channel:
            await api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=timeout)  # type: ignore[no-untyped-call]
    except grpc.aio.AioRpcError as exc:
        raise RegistrationError(
            f"kubelet at {kubelet_socket} did not register {resource_name!r} "
            f"(endpoint {endpoint!r}): {exc.code().name}: {exc.details()}"
        ) from exc
    logger.info("registered %s with the kubelet at %s (endpoint %s)", resource_name, kubelet_socket, endpoint)


async def wait_for_socket(path: Path, stop: asyncio.Event, interval: float = 0.5) -> tuple[int, int, int] | None:
    """Wait until a file exists at ``path``; returns its identity, or None if ``stop`` was set first."""
    logged = False
    while not stop.is_set():
        identity = socket_identity(path)
        if identity is not None:
            return identity
        if not logged:
            logger.info("waiting for the kubelet socket %s", path)
            logged = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    return None


class SocketWatch:
    """Polls socket identities; :meth:`wait` returns why the current serving lifetime must end."""

    def __init__(self, kubelet_socket: Path, interval: float = 0.5) -> None:
        self.kubelet_socket = kubelet_socket
        self.interval = interval

    async def wait(
        self, kubelet_identity: tuple[int, int, int], plugin_intact: Callable[[], bool], stop: asyncio.Event
    ) -> str:
        """Return ``"stop"``, ``"kubelet restarted"`` or ``"plugin socket removed"``.

        ``plugin_intact`` returns False once our own socket is gone or replaced.
        """
        while True:
            if stop.is_set():
                return "stop"
            if socket_identity(self.kubelet_socket) != kubelet_identity:
                return "kubelet restarted"
            if not plugin_intact():
                return "plugin socket removed"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
