"""Counting every REST request the facade answers, and answering the exceptions no handler took.

A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
``BaseHTTPMiddleware`` runs each request's app in a task of its own and
passes the answer through a memory stream, which showed in a py-spy profile
of the facade under ``legacygpu bench serve``. This one only watches the
``http.response.start`` message go by.

Every request is counted in ``legacygpu_http_requests_total`` by method,
route template (``unmatched`` when no route matched) and status code. An
exception that escapes every handler is answered here by
:func:`legacygpu.api.errors.unexpected_error` (500, or 503 for a busy
database) while no answer has started, so the connection stays usable; if
the answer had started it is re-raised to the server, and counted as 500.
"""

from __future__ import annotations

from prometheus_client import Counter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legacygpu.api.errors import unexpected_error

__all__ = ["RequestCounter"]


class RequestCounter:
    """ASGI middleware: ``counter.labels(method, route, code).inc()`` once per HTTP request."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if status:  # the answer has begun: nothing else can be sent on it
                status = 500
                raise
            await (await unexpected_error(Request(scope), exc))(scope, receive, watch)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.counter.labels(scope["method"], template, str(status or 500)).inc()
