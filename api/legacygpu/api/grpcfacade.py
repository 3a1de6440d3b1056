"""The facade's Open Inference Protocol over gRPC: the workers' ``GRPCInferenceService``, forwarded.

The facade serves the same service as each worker
(:mod:`legacygpu.worker.serving.grpcservice`, messages in
:mod:`legacygpu.core.oip`) on its own port (``--grpc-port``, Triton's 8001
by default). It answers the server's liveness, readiness and metadata
itself, and ``ModelReady`` by asking every worker (ready when at least one
has the model loaded); ``ModelMetadata`` and ``ModelInfer`` go to a worker
serving the model, chosen and retried by the same
:meth:`~legacygpu.api.forwarding.Forwarder.dispatch` as REST ``/v2``: least
outstanding requests, workers with the model loaded first, and a request
whose worker fails mid-call (the channel's ``UNAVAILABLE``, not the
worker's) sent once more to another worker.

Forwarded calls are not re-encoded: the request is parsed only to read the
model's name and goes on as the bytes the client sent, and the worker's
answer comes back as its bytes, over one persistent channel per worker. A
worker's error (``INVALID_ARGUMENT`` naming the tensor, ``NOT_FOUND``,
``UNAVAILABLE`` with ``retry-after``) ends the client's call with the same
code, message and trailing metadata.

Credentials: every method except ``ServerLive`` and ``ServerReady`` (the
health checks, open as REST's ``/v2/health/*`` are) needs the cluster's
token as metadata, ``authorization: Bearer <token>``, else
``UNAUTHENTICATED``. Requests larger than ``max_request_bytes`` are refused
with ``RESOURCE_EXHAUSTED``, as REST refuses them with 413.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import grpc
from fastapi import FastAPI

from legacygpu.api.deps import token_matches
from legacygpu.api.discovery import ServingEndpoint
from legacygpu.api.forwarding import Forwarder, NoWorker, WorkerFailed, forwarder_for
from legacygpu.core.oip import grpc_predict_v2_pb2 as pb

__all__ = ["ERROR_KEY", "SERVICE", "start", "stop"]

SERVICE = "inference.GRPCInferenceService"
ERROR_KEY = "legacygpu-error"
"""Trailing metadata a worker puts on the errors it answers (see the worker's grpcservice)."""
_RETRY_AFTER_SECONDS = "1"
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
_OPEN_METHODS = ("ServerLive", "ServerReady")
# Forwarded methods: the request message (to read the model's name from) and the field holding it.
_FORWARDED: dict[str, tuple[Any, str]] = {
    "ModelMetadata": (pb.ModelMetadataRequest, "name"),
    "ModelInfer": (pb.ModelInferRequest, "model_name"),
}


class _Aborted(Exception):
    """End the client's call with this code, message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


def _bytes(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _parse(message_type: Any, request: bytes, method: str) -> Any:
    try:
        return message_type.FromString(request)
    except Exception as exc:  # protobuf's DecodeError, whichever implementation raised it
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the {method} request: {exc}") from exc


class _FacadeService:
    """The service's handlers; one per facade, on the facade's event loop."""

    def __init__(self, app: FastAPI, forwarder: Callable[[], Forwarder]) -> None:
        self._app = app
        self._forwarder = forwarder
        self._channels: dict[str, grpc.aio.Channel] = {}

    def check_token(self, context: grpc.aio.ServicerContext) -> None:
        # The seam for roles: a method needing more than the cluster's token checks it here.
        sent = dict(context.invocation_metadata() or ()).get("authorization")
        if sent is None or not sent.startswith("Bearer "):
            raise _Aborted(grpc.StatusCode.UNAUTHENTICATED,
                           "missing bearer token: send the metadata 'authorization: Bearer <token>'")
        if not token_matches(sent.removeprefix("Bearer "), self._app.state.token):
            raise _Aborted(grpc.StatusCode.UNAUTHENTICATED, "invalid token")

    def _channel(self, endpoint: ServingEndpoint) -> grpc.aio.Channel:
        assert endpoint.grpc is not None  # dispatch(protocol="grpc") picks only workers serving gRPC
        channel = self._channels.get(endpoint.grpc)
        if channel is None:
            channel = self._channels[endpoint.grpc] = grpc.aio.insecure_channel(endpoint.grpc, options=_UNLIMITED)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    # answered by the facade ------------------------------------------------------------------------

    async def server_live(self, request: bytes) -> bytes:
        return _bytes(pb.ServerLiveResponse(live=True))

    async def server_ready(self, request: bytes) -> bytes:
        ready = bool([e for e in await self._forwarder().endpoints() if e.grpc is not None])
        return _bytes(pb.ServerReadyResponse(ready=ready))

    async def model_ready(self, request: bytes) -> bytes:
        message = _parse(pb.ModelReadyRequest, request, "ModelReady")
        status, _ = await self._forwarder().model_ready(message.name, message.version)
        return _bytes(pb.ModelReadyResponse(ready=status == 200))

    async def server_metadata(self, request: bytes) -> bytes:
        return _bytes(pb.ServerMetadataResponse(name="legacygpu", version=version("legacygpu"),
                                                extensions=["binary_tensor_data"]))

    def forwarded(self, method: str) -> Callable[[bytes], Awaitable[bytes]]:
        """The handler of a forwarded ``method``."""

        async def answer(request: bytes) -> bytes:
            return await self.forward(method, request)

        return answer

    # forwarded ------------------------------------------------------------------------------------

    async def forward(self, method: str, request: bytes) -> bytes:
        message_type, field = _FORWARDED[method]
        model = getattr(_parse(message_type, request, method), field)
        forwarder = self._forwarder()
        started = time.perf_counter()
        path = f"/{SERVICE}/{method}"

        async def send(endpoint: ServingEndpoint) -> bytes:
            call = self._channel(endpoint).unary_unary(path)  # bytes in, bytes out
            try:
                answer: bytes = await call(request)
            except grpc.aio.AioRpcError as exc:
                trailing = tuple((k, v) for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str))
                answered = any(k == ERROR_KEY for k, _ in trailing)
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not answered:
                    raise WorkerFailed(exc.details() or "UNAVAILABLE") from exc
                raise _Aborted(exc.code(), exc.details() or "", trailing) from exc
            return answer

        code = grpc.StatusCode.OK
        try:
            return await forwarder.dispatch(model or None, send, protocol="grpc")
        except NoWorker as exc:
            code = grpc.StatusCode.UNAVAILABLE
            raise _Aborted(code, str(exc), (("retry-after", _RETRY_AFTER_SECONDS),)) from exc
        except _Aborted as exc:
            code = exc.code
            raise
        finally:
            forwarder.duration.labels(model).observe(time.perf_counter() - started)
            forwarder.requests.labels(model, code.name).inc()


def _handler(method: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await method(request, context)
        except _Aborted as exc:
            await context.abort(exc.code, exc.details, trailing_metadata=exc.trailing)
            raise AssertionError("unreachable: abort raises") from exc

    return grpc.unary_unary_rpc_method_handler(call)  # no (de)serializers: the handlers see bytes


async def start(app: FastAPI, address: str, *, max_request_bytes: int) -> int:
    """Serve the protocol over gRPC on ``address`` for ``app`` (from its lifespan); returns the port bound.

    Raises ``RuntimeError`` if ``address`` cannot be bound.
    """
    service = _FacadeService(app, lambda: forwarder_for(app))

    def guarded(name: str, answer: Callable[[bytes], Awaitable[bytes]]) -> grpc.RpcMethodHandler:
        async def method(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name not in _OPEN_METHODS:
                service.check_token(context)
            return await answer(request)

        return _handler(method)

    handlers = {
        "ServerLive": guarded("ServerLive", service.server_live),
        "ServerReady": guarded("ServerReady", service.server_ready),
        "ServerMetadata": guarded("ServerMetadata", service.server_metadata),
        "ModelReady": guarded("ModelReady", service.model_ready),
        **{name: guarded(name, service.forwarded(name)) for name in _FORWARDED},
    }
    # so_reuseport off: gRPC's default would let a second facade bind the same port and take half the calls.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_request_bytes),
                                      ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    error: RuntimeError | None = None
    try:
        port: int = server.add_insecure_port(address)
    except RuntimeError as exc:  # newer gRPC raises where older ones returned 0
        port, error = 0, exc
    if port == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address} (is the port in use?)") from error
    await server.start()
    app.state.grpc_server, app.state.grpc_service, app.state.grpc_port = server, service, port
    return port


async def stop(app: FastAPI, grace_seconds: float = 5.0) -> None:
    """Stop the gRPC server (in-flight calls get ``grace_seconds``) and close its channels, if it was started."""
    server: grpc.aio.Server | None = getattr(app.state, "grpc_server", None)
    if server is None:
        return
    await server.stop(grace_seconds)
    await app.state.grpc_service.close()
    app.state.grpc_server = None
