"""A request-body size limit enforced before the body is parsed.

Checks ``Content-Length`` when it is sent, and otherwise (a chunked body)
reads the body into memory up to the limit before the application sees any
of it, answering 413 with a message that names the limit either way. The
application then gets the buffered body, so a too-large stream can never
surface as a parse error (400) from inside it. WebSocket and lifespan
traffic pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit", "replay"]


class BodySizeLimit:
    """ASGI middleware refusing request bodies over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return
        if declared is not None:  # the server already holds the client to Content-Length
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._reject(send, received, streamed=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay(b"".join(chunks), receive), send)

    async def _reject(self, send: Send, size: int, *, streamed: bool = False) -> None:
        amount = f"more than {self.max_bytes} bytes (streamed)" if streamed else f"{size} bytes"
        body: dict[str, Any] = {
            "detail": f"request body of {amount} is over the limit of {self.max_bytes} bytes "
            "(LEGACYGPU_MAX_REQUEST_BYTES)"
        }
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` giving the body already read first, whole, for the app a request is passed on to."""
    replayed = False

    async def replaying() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # after the body: disconnect notices, as the server sends them
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replaying
