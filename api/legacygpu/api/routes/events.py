"""``WebSocket /ws/cluster/events``: a live stream of worker and task events.

Browsers cannot set headers on a WebSocket, so the token may come as the
``token`` query parameter as well as an ``Authorization`` header. A bad or
missing token closes the socket with code 4401 before any event is sent.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from legacygpu.api.deps import Role, role_of

router = APIRouter(tags=["events"])

UNAUTHORIZED_CLOSE_CODE = 4401


@router.websocket("/ws/cluster/events")
async def cluster_events(websocket: WebSocket) -> None:
    header = websocket.headers.get("authorization", "")
    token = websocket.query_params.get("token") or (header[7:] if header.lower().startswith("bearer ") else None)
    await websocket.accept()  # accept first: a browser only sees close codes of accepted sockets
    if role_of(websocket, token) not in (Role.USER, Role.ADMIN):
        await websocket.close(code=UNAUTHORIZED_CLOSE_CODE, reason="missing or invalid token")
        return
    backend = websocket.app.state.backend
    async with backend.events.subscribe() as queue:
        await websocket.send_json({"type": "hello", "object": await backend.summary()})
        try:
            while True:
                await websocket.send_json(await queue.get())
        except (WebSocketDisconnect, RuntimeError):
            return
