"""Runs the REST and gRPC servers of one worker on their own event loop thread.

:class:`ServingServer` is what a worker process starts beside its task loop
(``legacygpu worker start`` does it; the task loops stay unaware of it)::

    server = ServingServer(ServingEngine(runner), host="127.0.0.1", http_port=0, grpc_port=0)
    endpoints = server.start()   # {"rest": "http://127.0.0.1:41234", "grpc": "127.0.0.1:41235"}
    ...
    server.stop()

``start`` returns once both servers listen (port 0 picks a free port; the
returned endpoints say which), and raises if either cannot bind. ``stop``
gives in-flight calls a grace period, after an optional drain during which
the servers go on answering (a pod on SIGTERM, see :data:`DRAIN_SECONDS`). Both servers and the engine share one
asyncio loop in a daemon thread, so a worker's main thread keeps its blocking
task loop and its signal handlers. The loop is uvloop's where installed
(:func:`_new_loop`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import uvicorn
from starlette.routing import BaseRoute

from legacygpu.worker.serving.engine import ServingEngine
from legacygpu.worker.serving.grpcservice import add_inference_service
from legacygpu.worker.serving.rest import create_rest_app

__all__ = ["DRAIN_SECONDS", "ServingServer"]

log = logging.getLogger(__name__)

_GRACE_SECONDS = 5.0
DRAIN_SECONDS = 3.0
"""The longest a worker pod keeps serving after its SIGTERM, no longer ready, before its endpoints close.

The facade drops a pod from its choice once the pod has a deletionTimestamp or is not Ready (it re-reads its
pod list every second); a request it sent just before that must still find the worker listening, and the
worker must answer every request it accepted. Well within the pod's termination grace period (30 s)."""
QUIET_SECONDS = 1.0
"""The drain ends early once no request has come for this long since it began or since the last one (the facade
re-reads its pods every second)."""


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (uvicorn[standard] brings it), else asyncio's.

    uvicorn picks uvloop itself only when it makes the loop; here the thread makes it. uvloop's socket
    and callback handling cost a fraction of asyncio's per request, and grpc.aio runs on it too (the
    facade's gRPC server does, under uvicorn).
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ServingServer:
    """The Open Inference Protocol over REST and gRPC for one engine."""

    def __init__(self, engine: ServingEngine, *, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int | None = 0, advertise_host: str | None = None,
                 routes: Sequence[BaseRoute] = ()) -> None:
        self.engine = engine
        self.routes = routes
        """More REST routes on the same port (the local worker's task channel)."""
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.advertise_host = advertise_host or (host if host not in ("0.0.0.0", "::", "") else socket.gethostname())
        self.endpoints: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._grpc: grpc.aio.Server | None = None

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        """Start both servers; returns ``{"rest": url, "grpc": "host:port"}``."""
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it a response written in two parts waits ~40 ms for the client's delayed ACK.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.http_port))
        self._thread = threading.Thread(target=self._run, args=(sock,), name="serving", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the serving endpoints did not start: {self._error}") from self._error
        return self.endpoints

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop both servers, letting in-flight calls finish for a few seconds.

        ``drain_seconds``: keep serving up to that long first, until no request has come for
        :data:`QUIET_SECONDS` (a pod being deleted: it already reports not ready, and the facade, which
        still had it in its list, stops sending within that time); requests sent before the listener
        closes are answered, not refused.
        """
        if self._loop is None or self._thread is None:
            return
        if drain_seconds > 0 and self._thread.is_alive():
            log.info("draining: serving up to %.1f s more before closing the endpoints", drain_seconds)
            began = time.monotonic()
            while time.monotonic() < began + drain_seconds and self._thread.is_alive() and not self._quiet(began):
                time.sleep(0.05)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self._thread.join(timeout=_GRACE_SECONDS + 5)

    def _quiet(self, since: float) -> bool:
        """Nothing in flight and no request for :data:`QUIET_SECONDS` after ``since``: the senders have stopped."""
        last = max(since, self.engine.last_request)
        return self.engine.in_flight == 0 and time.monotonic() - last >= QUIET_SECONDS

    def _run(self, sock: socket.socket) -> None:
        self._loop = _new_loop()
        try:
            self._loop.run_until_complete(self._serve(sock))
        except BaseException as exc:
            self._error = exc
            self._started.set()
            log.exception("the serving endpoints stopped")
        finally:
            self._loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        if self.grpc_port is not None:
            self._grpc = grpc.aio.server()
            add_inference_service(self._grpc, self.engine)
            bound = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
            if bound == 0:
                raise RuntimeError(f"cannot bind gRPC on {self.host}:{self.grpc_port}")
            await self._grpc.start()
            self.endpoints["grpc"] = f"{self.advertise_host}:{bound}"
        config = uvicorn.Config(create_rest_app(self.engine, self.routes), log_level="warning", lifespan="off",
                                access_log=False, timeout_keep_alive=75)
        self._uvicorn = uvicorn.Server(config)
        port = sock.getsockname()[1]
        self.endpoints["rest"] = f"http://{self.advertise_host}:{port}"
        serving = asyncio.ensure_future(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()
        log.info("Open Inference Protocol endpoints: %s", self.endpoints)
        self._started.set()
        try:
            await serving
        finally:
            if self._grpc is not None:
                await self._grpc.stop(_GRACE_SECONDS)
            await self.engine.close()

    def __enter__(self) -> ServingServer:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()
