"""What the worker's and the facade's bare ASGI ``/v2`` infer paths share.

Both answer ``POST …/infer`` before their framework's routing (it costs more than
the request itself for small models), so both read the request body straight from
the ASGI ``receive`` channel.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["INFER_PATH", "read_body", "send_response"]

INFER_PATH = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
"""``POST /v2/models/{model}[/versions/{version}]/infer``, the path both answer themselves."""


async def read_body(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> bytes:
    """The whole request body, from as many ``http.request`` messages as the server sends it in."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def send_response(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int,
                        headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """One whole answer: ``headers`` (lower-case names) plus its ``content-length``, then ``body``."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
