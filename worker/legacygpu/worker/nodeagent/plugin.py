"""The device-plugin gRPC server on a unix socket in the kubelet's device-plugin directory.

Design (after NVIDIA's plugin and grpc's asyncio examples): :class:`PluginServer`
is created with its socket path, and :meth:`PluginServer.start` removes a
stale socket, binds, starts, and then dials its own socket and calls
``GetDevicePluginOptions`` to prove it answers before anyone registers it.
:meth:`PluginServer.stop` first ends every ``ListAndWatch`` stream (they would
otherwise hold the grace period open), then stops the server with a grace
period for calls in flight, then removes the socket if it is still ours (same
inode), never a newer file of the same name.

:class:`DevicePluginServicer` answers the five v1beta1 calls from the shared
:class:`~.inventory.DeviceInventory`. ``ListAndWatch`` sends the full list at
once and again on every change of ids or health. Errors leave as status codes:
an unknown device id is ``INVALID_ARGUMENT``, an Unhealthy one
``FAILED_PRECONDITION``, each with a message naming the ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from legacygpu.worker.nodeagent.allocation import allocate, preferred_allocation
from legacygpu.worker.nodeagent.errors import PluginServerError, UnhealthyDeviceError, UnknownDeviceError
from legacygpu.worker.nodeagent.inventory import DeviceInventory, PluginDevice
from legacygpu.worker.nodeagent.v1beta1 import HEALTHY, UNHEALTHY, api_pb2, api_pb2_grpc

__all__ = ["DevicePluginServicer", "PluginServer", "check_socket_path", "device_message", "socket_identity"]

logger = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, terminating NUL included.
MAX_SOCKET_PATH = 107


def socket_identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, ctime) of the file at ``path``, or None if there is none.

    The change time is part of it because filesystems hand a freed inode number
    to the next file created, so a socket recreated at once can reuse it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def check_socket_path(path: Path) -> None:
    """Raise :class:`PluginServerError` if ``path`` is too long to bind a unix socket to."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise PluginServerError(
            f"socket path {path} is {len(os.fsencode(path))} bytes; unix sockets allow "
            f"{MAX_SOCKET_PATH}: use a shorter --kubelet-dir"
        )


def device_message(device: PluginDevice) -> api_pb2.Device:
    message = api_pb2.Device(ID=device.id, health=HEALTHY if device.healthy else UNHEALTHY)
    if device.numa_node is not None:
        message.topology.nodes.append(api_pb2.NUMANode(ID=device.numa_node))
    return message


def plugin_options() -> api_pb2.DevicePluginOptions:
    return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):
    """The v1beta1 ``DevicePlugin`` service over a :class:`DeviceInventory`."""

    def __init__(self, inventory: DeviceInventory, dev_root: Path) -> None:
        self.inventory = inventory
        self.dev_root = dev_root
        self._stopping = False

    def stop_streams(self) -> None:
        self._stopping = True
        self.inventory.wake()

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return plugin_options()

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        sent: list[tuple[str, bool]] | None = None
        while not self._stopping:
            changed = self.inventory.changed
            devices = self.inventory.devices()
            view = [(d.id, d.healthy) for d in devices]
            if view != sent:
                logger.debug("ListAndWatch: sending %d devices", len(devices))
                yield api_pb2.ListAndWatchResponse(devices=[device_message(d) for d in devices])
                sent = view
            await changed.wait()

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        response = api_pb2.PreferredAllocationResponse()
        for container in request.container_requests:
            ids = preferred_allocation(list(container.available_deviceIDs),
                                       list(container.must_include_deviceIDs),
                                       container.allocation_size, self.inventory)
            response.container_responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return response

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.AllocateResponse:
        try:
            response = allocate(request, self.inventory, self.dev_root)
        except (UnknownDeviceError, UnhealthyDeviceError) as exc:
            logger.warning("Allocate refused: %s", exc)
            code = (grpc.StatusCode.INVALID_ARGUMENT if isinstance(exc, UnknownDeviceError)
                    else grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(exc))
            raise  # abort() raises; this line only documents that nothing follows
        logger.info("Allocate: %s", [list(c.devices_ids) for c in request.container_requests])
        return response

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()


class PluginServer:
    """One serving lifetime of the plugin socket (the agent makes a new one per kubelet)."""

    def __init__(self, inventory: DeviceInventory, socket_path: Path, dev_root: Path,
                 *, grace: float = 5.0) -> None:
        check_socket_path(socket_path)
        self.socket_path = socket_path
        self.grace = grace
        self.servicer = DevicePluginServicer(inventory, dev_root)
        self._server: grpc.aio.Server | None = None
        self._identity: tuple[int, int, int] | None = None

    async def start(self, self_check_timeout: float = 5.0) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_socket(force=True)
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.servicer, server)  # type: ignore[no-untyped-call]
        try:
            bound = server.add_insecure_port(f"unix:{self.socket_path}")
        except RuntimeError as exc:
            raise PluginServerError(f"cannot bind {self.socket_path}: {exc}") from exc
        if not bound:
            raise PluginServerError(f"cannot bind {self.socket_path}")
        await server.start()
        self._server = server
        self._identity = socket_identity(self.socket_path)
        try:
            async with grpc.aio.insecure_channel(f"unix:{self.socket_path}") as channel:
                stub = api_pb2_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
                await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=self_check_timeout,
                                                  wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            await self.stop()
            raise PluginServerError(f"plugin server on {self.socket_path} does not answer: {exc.details()}"
                                    ) from exc
        logger.info("device plugin serving on %s", self.socket_path)

    def socket_intact(self) -> bool:
        """True while our socket file is still the one we bound (the kubelet may delete it)."""
        return self._identity is not None and socket_identity(self.socket_path) == self._identity

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        self.servicer.stop_streams()
        if server is not None:
            await asyncio.shield(server.stop(self.grace if grace is None else grace))
        self._remove_socket(force=False)
        logger.info("device plugin on %s stopped", self.socket_path)

    def _remove_socket(self, *, force: bool) -> None:
        current = socket_identity(self.socket_path)
        if current is None or not (force or current == self._identity):
            return
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
