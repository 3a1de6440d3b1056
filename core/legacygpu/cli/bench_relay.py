"""A bare TCP relay: the reference ``legacygpu bench serve`` measures the facade's overhead against.

The facade's overhead over a direct worker call includes what any process between a client and a
worker costs on this machine: the request's bytes go through loopback twice more (into the relay,
then out to the worker), and the relay's process wakes for each part, on cores the client and the
worker also use. This relay does only that: it parses nothing, gives each client connection its own
connection to the worker, and passes bytes on each way as they come, on uvloop as the facade runs
(a side whose peer cannot take more stops being read until it can). What it adds over a direct call
is the floor under any proxy's overhead here; what the facade adds over it is the facade's own work
(HTTP, the token, choosing a worker).

Run as ``python -m legacygpu.cli.bench_relay HOST PORT``: it listens on a free loopback port and
prints that port on its first line.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

__all__ = ["serve"]


class _Side(asyncio.Protocol):
    """One end of a relayed connection; what it receives is written to ``peer``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self._early: list[bytes] = []  # received before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self._early.append(data)
        else:
            self.peer.transport.write(data)

    def joined(self, peer: _Side) -> None:
        """``peer`` (the worker's side, just connected) and this side are linked both ways; what came before
        goes on."""
        self.peer, peer.peer = peer, self
        assert peer.transport is not None
        peer.transport.writelines(self._early)
        self._early.clear()

    def pause_writing(self) -> None:  # this side's buffer is full: stop reading the other
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(host: str, port: int) -> asyncio.Server:
    """A relay to ``host:port``, listening on a free port of 127.0.0.1 (``server.sockets[0]``)."""
    loop = asyncio.get_running_loop()

    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> _Side:
        client = _Side()

        async def connect() -> None:
            try:
                _, worker = await loop.create_connection(_Side, host, port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            client.joined(worker)
            if client.transport is None or client.transport.is_closing():  # the client left meanwhile
                assert worker.transport is not None
                worker.transport.close()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    return await loop.create_server(accepted, "127.0.0.1", 0)


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    sys.stdout.write(f"{server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_main(sys.argv[1], int(sys.argv[2])))
