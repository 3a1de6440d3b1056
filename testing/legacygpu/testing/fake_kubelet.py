"""A stand-in kubelet: the Registration service on a real unix socket, and a real plugin client.

It behaves like the kubelet's device manager as far as a plugin can see:
on start it wipes the sockets left in its device-plugin directory and serves
``Registration`` on ``kubelet.sock``; ``Register`` is checked (version
``v1beta1``, a resource name with a domain) and answered, and then the fake
kubelet dials the plugin's endpoint, asks ``GetDevicePluginOptions`` and keeps
a ``ListAndWatch`` stream open, recording every device list it receives.
``restart()`` stops it, removes ``kubelet.sock`` and starts a new one, which
is what a kubelet restart looks like from the plugin's side. Tests call
``Allocate`` and ``GetPreferredAllocation`` through :meth:`FakeKubelet.stub`.
Everything is real gRPC over real unix sockets; only the kubelet is ours.

Used by the node agent's tests and by the e2e cluster's kubelet stand-in
(e2e/e2ecluster/devicemanager.py), which passes ``on_list``/``on_end`` to turn
each advertised device list into the Node's capacity, as a kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from legacygpu.worker.nodeagent.v1beta1 import VERSION, api_pb2, api_pb2_grpc

__all__ = ["DeviceView", "EndHook", "FakeKubelet", "ListHook"]


@dataclass(frozen=True)
class DeviceView:
    id: str
    health: str
    numa: tuple[int, ...]


def _view(response: api_pb2.ListAndWatchResponse) -> list[DeviceView]:
    return [DeviceView(d.ID, d.health, tuple(n.ID for n in d.topology.nodes)) for d in response.devices]


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    async def Register(self, request: api_pb2.RegisterRequest, context: grpc.aio.ServicerContext) -> api_pb2.Empty:
        if request.version != VERSION:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version!r}")
        if self.kubelet.refused < self.kubelet.refuse:
            self.kubelet.refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "device manager not ready")
        if "/" not in request.resource_name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad resource name {request.resource_name!r}")
        self.kubelet.registrations.append(request)
        self.kubelet._connect_later(request)
        return api_pb2.Empty()


ListHook = Callable[[list[DeviceView]], Awaitable[None]]
EndHook = Callable[[grpc.StatusCode], Awaitable[None]]


class FakeKubelet:
    """The kubelet's device manager for one device-plugin directory.

    ``on_list`` is awaited with every device list a plugin sends, ``on_end`` with the status
    code a ``ListAndWatch`` stream ended with (``OK`` when the plugin closed it).
    """

    def __init__(self, directory: Path, *, refuse: int = 0, on_list: ListHook | None = None,
                 on_end: EndHook | None = None) -> None:
        self.directory = directory
        self.on_list = on_list
        self.on_end = on_end
        self.refuse = refuse  # answer this many Register calls with an error first
        self.refused = 0
        self.socket = directory / "kubelet.sock"
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.options: list[api_pb2.DevicePluginOptions] = []
        self.lists: list[list[DeviceView]] = []
        self.stream_ends: list[grpc.StatusCode] = []  # how each ListAndWatch stream ended
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    async def start(self, *, wipe: bool = True) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.sock") if wipe else ():  # the kubelet's device manager does this
            leftover.unlink()
        server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        assert server.add_insecure_port(f"unix:{self.socket}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        self.socket.unlink(missing_ok=True)

    async def restart(self, *, wipe: bool = True) -> None:
        await self.stop()
        await self.start(wipe=wipe)

    # -- the kubelet's side of a registered plugin --------------------------------

    def _connect_later(self, request: api_pb2.RegisterRequest) -> None:
        task = asyncio.create_task(self._watch(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, request: api_pb2.RegisterRequest) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = grpc.aio.insecure_channel(f"unix:{self.directory / request.endpoint}")
        stub = api_pb2_grpc.DevicePluginStub(self._channel)
        self.options.append(await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5))
        code = grpc.StatusCode.OK
        try:
            async for response in stub.ListAndWatch(api_pb2.Empty()):
                devices = _view(response)
                async with self._changed:
                    self.lists.append(devices)
                    self._changed.notify_all()
                if self.on_list is not None:
                    await self.on_list(devices)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        self.stream_ends.append(code)
        if self.on_end is not None:
            await self.on_end(code)

    def stub(self) -> api_pb2_grpc.DevicePluginStub:
        assert self._channel is not None, "no plugin has registered"
        return api_pb2_grpc.DevicePluginStub(self._channel)

    # -- waiting helpers for tests ------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        async def poll() -> None:
            while not predicate():
                await asyncio.sleep(0.05)

        await asyncio.wait_for(poll(), timeout)

    async def wait_for_list(self, predicate: Callable[[list[DeviceView]], bool], *, since: int = 0,
                            timeout: float = 20.0) -> list[DeviceView]:
        """The first device list received after the ``since``-th one that satisfies ``predicate``."""
        async def scan() -> list[DeviceView]:
            seen = since
            async with self._changed:
                while True:
                    for devices in self.lists[seen:]:
                        if predicate(devices):
                            return devices
                    seen = len(self.lists)
                    await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    @property
    def latest(self) -> list[DeviceView]:
        return self.lists[-1] if self.lists else []
