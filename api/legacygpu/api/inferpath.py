"""The facade's ``/v2`` inference requests, answered without FastAPI's routing.

``POST /v2/models/{m}[/versions/{v}]/infer`` is the one route on the
facade's hot path, and all it does is pass bytes on to a worker
(:mod:`legacygpu.api.forwarding`). Through FastAPI it paid for the
matching of every route, the dependency injection of the token check, the
exception middleware and a ``Request`` object, which together cost more CPU
than the forwarding itself. :class:`InferPath` is a plain ASGI middleware
that sits inside the request counter and the body-size limit (so both still
see every request) and answers the common case directly:

* a ``POST`` to an inference path with a bearer token that holds the user
  or admin role: the body is forwarded, and the worker's answer (status,
  protocol headers, body) is sent back as it came. A body that arrives in
  several parts (a large tensor) is sent on to the worker part by part as
  the parts come (:class:`~legacygpu.api.workerhttp.BodyStream`), so that the
  worker reads it while the facade still does, rather than after;
* anything else (another path or method, no token or a wrong one) goes on to
  FastAPI unchanged, where the route in :mod:`legacygpu.api.routes.v2` gives
  the same answer and the same 401/403 errors as every other route.

The request counter still labels these requests with the route's template:
the matching route is put in the scope as FastAPI's router would.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from legacygpu.api.deps import Role, bearer_token, role_of
from legacygpu.api.forwarding import FORWARDED_RAW_HEADERS, NoWorker, forwarder_for
from legacygpu.api.routes import v2
from legacygpu.api.workerhttp import BodyStream, IncompleteBody
from legacygpu.core.oip.asgi import INFER_PATH, read_body, send_response

__all__ = ["InferPath", "install"]

_ALLOWED = (Role.USER, Role.ADMIN)
_RETRY_AFTER_SECONDS = b"1"


class InferPath:
    """ASGI middleware: forwards authorised ``/v2`` inference requests itself, passes the rest on."""

    def __init__(self, app: ASGIApp, routes: dict[bool, Any]) -> None:
        self.app = app
        self._routes = routes  # versioned or not -> the FastAPI route, for the request counter's label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not (match := INFER_PATH.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = []
        token = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = bearer_token(value)
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name in FORWARDED_RAW_HEADERS:
                headers.append((name, value))
        if token is None or role_of(HTTPConnection(scope), token) not in _ALLOWED:
            await self.app(scope, receive, send)  # FastAPI answers 401/403 in its own words
            return
        scope["route"] = self._routes[match["version"] is not None]
        forwarder = forwarder_for(scope["app"])
        try:
            first, more_body = await _next_part(receive)
            body: bytes | list[bytes] | BodyStream = first
            if more_body:  # without Content-Length the body-size limit has buffered the body: not streamed
                body = BodyStream(length, first, lambda: _next_part(receive)) if length is not None else [
                    first, await read_body(receive)]
            answer = await forwarder.forward("POST", scope["path"], model=match["model"], content=body,
                                             headers=headers)
        except NoWorker as exc:
            refusal = [(b"content-type", b"application/json"), (b"retry-after", _RETRY_AFTER_SECONDS)]
            await send_response(send, 503, refusal, _error_body(str(exc)))
            return
        except IncompleteBody:  # the client went away mid-body: nobody to answer
            return
        await send_response(send, answer.status_code, answer.raw_headers, answer.content)


def install(app: FastAPI) -> None:
    """Add :class:`InferPath` to ``app`` (which includes :mod:`legacygpu.api.routes.v2`'s router); call it
    before the body-size limit and the request counter are added, so that they wrap it."""
    by_name = {r.name: r for r in v2.router.routes if isinstance(r, APIRoute)}
    app.add_middleware(InferPath, routes={False: by_name["model_infer"], True: by_name["model_version_infer"]})


async def _next_part(receive: Receive) -> tuple[bytes, bool]:
    """The next part of the request's body, and whether more follow."""
    message = await receive()
    if message["type"] != "http.request":
        raise IncompleteBody("the client went away before it sent the whole body")
    return message.get("body", b""), message.get("more_body", False)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
