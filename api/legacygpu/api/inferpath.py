"""The facade's ``/v2`` inference requests, answered in front of FastAPI.

``POST /v2/models/{m}[/versions/{v}]/infer`` is the one route on the
facade's hot path, and all it does is pass bytes on to a worker
(:mod:`legacygpu.api.forwarding`). Through FastAPI it paid for the
matching of every route, the dependency injection of the token check, the
exception middleware and a ``Request`` object, which together cost more CPU
than the forwarding itself; and even past FastAPI's routing, as middleware,
it still went through six middleware, FastAPI's (server error, exception
telemetry, body limit) and ours (request counter, body-size limit, task
path), half of them wrapping the request's ``send``: in
A/B runs on SqueezeNet's 600 KB bodies the facade spent measurably less CPU
per request without them. :class:`InferPath` is the app's middleware stack
as :func:`legacygpu.api.app.create_app` builds it, the first stop of every
request after FastAPI's own entry (its OpenTelemetry check), and answers the
common case itself:

* a ``POST`` to an inference path with a ``Content-Length`` within the
  body-size limit and a bearer token that holds the user or admin role: the
  body is forwarded, and the worker's answer (status, protocol headers,
  body) is sent back as it came. A body that arrives in several parts (a
  large tensor) is sent on to the worker part by part as the parts come
  (:class:`~legacygpu.api.workerhttp.BodyStream`), so that the worker reads
  it while the facade still does, rather than after. The request is counted
  by the same :class:`~legacygpu.api.requestcount.RequestCounter` as every
  other one (which also answers an exception no one expected), labelled with
  the route's template: the matching route and its path parameters are put
  in the scope as FastAPI's router would;
* anything else goes to FastAPI unchanged: another path or method; no token
  or a wrong one (the route in :mod:`legacygpu.api.routes.v2` gives the same
  401/403 errors as every other route); a body over the limit (the
  body-size limit answers 413) or one without ``Content-Length`` (the limit
  counts it as it comes, then the route forwards it). So the request counter
  and the body-size limit still see every request.
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
from legacygpu.api.requestcount import RequestCounter
from legacygpu.api.routes import v2
from legacygpu.api.workerhttp import BodyStream, IncompleteBody
from legacygpu.core.oip.asgi import INFER_PATH, send_response

__all__ = ["InferPath"]

_ALLOWED = (Role.USER, Role.ADMIN)
_RETRY_AFTER_SECONDS = b"1"
_FORWARD = "legacygpu.forward"
"""Scope key: the request's ``Content-Length`` and the headers sent on, read once in :meth:`InferPath.__call__`."""


class InferPath:
    """ASGI app in front of ``app``'s own stack (``framework``): forwards authorised ``/v2`` inference
    requests itself, passes the rest on.

    ``app`` is the facade (its state: tokens, metrics, the forwarder); ``max_bytes`` the body-size limit
    that :class:`~legacygpu.api.limits.BodySizeLimit` enforces in ``framework``.
    """

    def __init__(self, app: FastAPI, framework: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.framework = framework
        self.max_bytes = max_bytes
        by_name = {r.name: r for r in v2.router.routes if isinstance(r, APIRoute)}
        self._routes: dict[bool, Any] = {False: by_name["model_infer"], True: by_name["model_version_infer"]}
        self._counted = RequestCounter(self._forward, counter=app.state.metrics.http_requests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not (match := INFER_PATH.match(scope["path"])):
            await self.framework(scope, receive, send)
            return
        token = length = None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = bearer_token(value)
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name in FORWARDED_RAW_HEADERS:
                headers.append((name, value))
        if (length is None or length > self.max_bytes or token is None
                or role_of(HTTPConnection(scope), token) not in _ALLOWED):
            await self.framework(scope, receive, send)  # the module's docstring: FastAPI answers these
            return
        scope["route"] = self._routes[match["version"] is not None]
        scope["path_params"] = match.groupdict()
        scope[_FORWARD] = (length, headers)
        await self._counted(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The body (of the ``Content-Length`` checked) to a worker, and its answer back."""
        length, headers = scope[_FORWARD]
        try:
            first, more_body = await _next_part(receive)
            body = BodyStream(length, first, lambda: _next_part(receive)) if more_body else first
            answer = await forwarder_for(self.app).forward("POST", scope["path"], model=scope["path_params"]["model"],
                                                           content=body, headers=headers)
        except NoWorker as exc:
            refusal = [(b"content-type", b"application/json"), (b"retry-after", _RETRY_AFTER_SECONDS)]
            await send_response(send, 503, refusal, _error_body(str(exc)))
            return
        except IncompleteBody:  # the client went away mid-body: nobody to answer
            return
        await send_response(send, answer.status_code, answer.raw_headers, answer.content)


async def _next_part(receive: Receive) -> tuple[bytes, bool]:
    """The next part of the request's body, and whether more follow."""
    message = await receive()
    if message["type"] != "http.request":
        raise IncompleteBody("the client went away before it sent the whole body")
    return message.get("body", b""), message.get("more_body", False)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
