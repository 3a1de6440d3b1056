"""An in-process event bus feeding the WebSocket stream and the dashboard.

Events are small dicts: ``{"type": "task.updated", "time": <epoch>, "object": {...}}``.
Each subscriber gets its own bounded queue; a subscriber that falls behind
loses its oldest events rather than slowing the coordinator down (the
stream is for live views; the REST API is the record).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["EventBus"]


class EventBus:
    """Fan-out of events to any number of subscribers."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._queue_size = queue_size

    def publish(self, event_type: str, obj: dict[str, Any]) -> None:
        event = {"type": event_type, "time": time.time(), "object": obj}
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
