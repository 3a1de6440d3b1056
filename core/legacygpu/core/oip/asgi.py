"""What the worker's and the facade's bare ASGI ``/v2`` infer paths share.

Both answer ``POST …/infer`` before their framework's routing (it costs more than
the request itself for small models), so both read the request body straight from
the ASGI ``receive`` channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["read_body"]


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
