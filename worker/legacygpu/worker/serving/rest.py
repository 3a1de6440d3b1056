"""The worker's Open Inference Protocol REST endpoints (a Starlette app).

=========================================================  ==========================================
``GET  /v2/health/live``                                   200 ``{"live": true}``
``GET  /v2/health/ready``                                  200, or 503 while the worker is registering
``GET  /v2``                                               server metadata (name, version, extensions)
``GET  /v2/models/{m}[/versions/{v}]``                     model metadata; 404 for an unknown model
``GET  /v2/models/{m}[/versions/{v}]/ready``               200 ``{"ready": true}``, else 404/503
``POST /v2/models/{m}[/versions/{v}]/infer``               JSON, or JSON + binary tensor data
``POST /v2/repository/index``                              ``[{"name", "version", "state", "reason"}]``
``POST /v2/repository/models/{m}/load``                    load the live version now; 200 ``{}``
``POST /v2/repository/models/{m}/unload``                  drop it, refuse its inferences; 200 ``{}``
``GET  /metrics``                                          Prometheus (:mod:`.metrics`)
=========================================================  ==========================================

Errors are ``{"error": "<message>"}`` with the status of the
:class:`~legacygpu.worker.serving.errors.ServingError` raised, and
``Retry-After`` when the queue was full. The app has no authentication: the
worker binds loopback in local mode and the pod network in Kubernetes, and
clients outside reach models through the facade, which checks the token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from legacygpu.core.oip.asgi import INFER_PATH, read_body, send_response
from legacygpu.worker.serving.codec import HEADER_LENGTH, decode_rest_request, encode_rest_response
from legacygpu.worker.serving.engine import ServingEngine
from legacygpu.worker.serving.errors import BadRequest, ModelNotFound, ServingError, Unavailable
from legacygpu.worker.serving.metrics import CONTENT_TYPE

__all__ = ["create_rest_app", "error_response"]


def error_response(exc: ServingError) -> JSONResponse:
    """The protocol's error answer for ``exc``: ``{"error": ...}``, its status, ``Retry-After`` when it has one."""
    headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after is not None else None
    return JSONResponse({"error": str(exc)}, status_code=exc.http_status, headers=headers)


def _version(request: Request) -> str:
    return str(request.path_params.get("version", ""))


def create_rest_app(engine: ServingEngine, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The REST endpoints over ``engine``, plus ``extra_routes`` (the local worker's task channel)."""

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        is_ready = engine.ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse(engine.metadata())

    async def model_metadata(request: Request) -> Response:
        try:
            return JSONResponse(engine.model_metadata(request.path_params["model"], _version(request)))
        except ServingError as exc:
            return error_response(exc)

    async def model_ready(request: Request) -> Response:
        model = request.path_params["model"]
        try:
            engine.card(model, _version(request))
        except ServingError as exc:
            return error_response(exc)
        if not engine.model_ready(model, _version(request)):
            return error_response(Unavailable(f"model {model!r} is not ready"))
        return JSONResponse({"name": model, "ready": True})

    async def index(_: Request) -> Response:
        try:
            return JSONResponse(engine.index())
        except ServingError as exc:
            return error_response(exc)

    async def load(request: Request) -> Response:
        try:
            await engine.load(request.path_params["model"])
        except ServingError as exc:
            return error_response(exc)
        return JSONResponse({})

    async def unload(request: Request) -> Response:
        try:
            await engine.unload(request.path_params["model"])
        except ServingError as exc:
            return error_response(exc)
        return JSONResponse({})

    async def metrics(_: Request) -> Response:
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE)

    async def not_found(request: Request, _: Any) -> Response:
        return error_response(ModelNotFound(f"no endpoint {request.method} {request.url.path}"))

    routes = [
        *extra_routes,  # first: the task channel's pushes are matched before the /v2 routes are tried
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", unload, methods=["POST"]),
        Route("/metrics", metrics),
    ]
    return _InferFirst(engine, Starlette(routes=routes, exception_handlers={404: not_found}))


_HEADER_LENGTH = HEADER_LENGTH.lower().encode()


class _InferFirst:
    """``POST .../infer`` answered before Starlette's routing and middleware; every other request goes on.

    Inference is the one hot path: Starlette's exception middleware, the match against every route and
    the ``Request`` object took a third of the serving thread's time per request (py-spy under
    ``legacygpu bench serve``). Other methods on an inference path get Starlette's 404.
    """

    def __init__(self, engine: ServingEngine, app: ASGIApp) -> None:
        self.engine = engine
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not (match := INFER_PATH.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        try:
            content, headers = await self._infer(match["model"], match["version"] or "", scope, receive)
        except ServingError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await send_response(send, 200, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
                            content)

    async def _infer(self, model: str, version: str, scope: Scope, receive: Receive) -> tuple[bytes, dict[str, str]]:
        raw: bytes | None = next((v for k, v in scope["headers"] if k == _HEADER_LENGTH), None)
        length = raw.decode("latin-1") if raw is not None else None
        try:
            header_length = int(length) if length is not None else None
        except ValueError as exc:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, not {length!r}") from exc
        body = await read_body(receive)
        decoded = decode_rest_request(model, version, body, header_length)
        outputs, _, live = await self.engine.infer(decoded)
        return encode_rest_response(decoded, outputs, model_version=live)
