"""Following a task to its end: the facade's event stream first, polling as the fallback.

``task submit --wait`` opens ``WebSocket /ws/cluster/events`` *before* it
submits (the facade's ``hello`` message proves the subscription is in
place), so no change of the new task can slip by unseen. It then reads
``task.*`` events for that task and fetches the task once, when an event says
it has finished (events carry no result). A quiet stream is checked with one
``GET`` every few seconds, in case the facade dropped events for a slow
reader; if the stream cannot be opened or breaks, following goes on by
polling, as before, so ``--wait`` never depends on WebSockets working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from legacygpu.cli.client import ApiClient, CliError

__all__ = ["EVENTS_PATH", "TERMINAL", "follow", "open_events"]

log = logging.getLogger(__name__)

EVENTS_PATH = "/ws/cluster/events"
TERMINAL = frozenset({"Succeeded", "Failed", "Cancelled"})
POLL_SECONDS = 0.1
"""Polling interval when there is no stream."""
QUIET_CHECK_SECONDS = 3.0
"""With a stream: how long a silence lasts before the task is fetched once to check on it."""

PhaseCallback = Callable[[dict[str, Any]], None]


def events_url(api_url: str) -> str:
    return api_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + EVENTS_PATH


@contextlib.contextmanager
def open_events(
    client: ApiClient, url: str | None = None, open_timeout: float = 5.0
) -> Iterator[ClientConnection | None]:
    """A subscribed event stream (its ``hello`` already read), or None when it cannot be had."""
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    target = url or events_url(client.url)
    with contextlib.ExitStack() as stack:
        stream: ClientConnection | None
        try:
            stream = stack.enter_context(
                connect(target, additional_headers=headers, open_timeout=open_timeout, proxy=None, max_size=None)
            )
            hello = json.loads(stream.recv(timeout=open_timeout))
            if hello.get("type") != "hello":
                raise WebSocketException(f"expected a hello message, got {hello.get('type')!r}")
        except (OSError, TimeoutError, WebSocketException, ValueError) as exc:
            log.debug("no event stream at %s (%s); polling instead", target, exc)
            stream = None
        yield stream


def follow(
    client: ApiClient,
    task_id: str,
    stream: ClientConnection | None,
    *,
    on_change: PhaseCallback | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The task once it has finished, read in full (result included).

    ``stream`` must have been opened (:func:`open_events`) before the task
    was submitted; None follows by polling.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last = [""]

    def seen(task: dict[str, Any]) -> bool:
        if on_change is not None and task["phase"] != last[0]:
            on_change(task)
        last[0] = task["phase"]
        return task["phase"] in TERMINAL

    if stream is not None:
        try:
            if _follow_stream(client, task_id, stream, seen, deadline):
                return client.get(f"/cluster/tasks/{task_id}")
        except (OSError, WebSocketException, ValueError) as exc:
            log.debug("event stream broke (%s); polling instead", exc)
    while True:
        task = client.get(f"/cluster/tasks/{task_id}")
        if seen(task):
            return task
        _check_deadline(deadline, task_id, task["phase"])
        time.sleep(POLL_SECONDS)


def _follow_stream(
    client: ApiClient, task_id: str, stream: ClientConnection, seen: Callable[[dict[str, Any]], bool],
    deadline: float | None,
) -> bool:
    """True once the stream (or a check in a silence) shows the task finished.

    The stream was opened before the task was submitted, so every change of
    the task is in it, in order.
    """
    while True:
        _check_deadline(deadline, task_id, "unfinished")
        wait = QUIET_CHECK_SECONDS
        if deadline is not None:
            wait = max(min(wait, deadline - time.monotonic()), 0.0)
        try:
            event = json.loads(stream.recv(timeout=wait))
        except TimeoutError:
            if seen(client.get(f"/cluster/tasks/{task_id}")):
                return True
            continue
        obj = event.get("object") or {}
        if str(event.get("type", "")).startswith("task.") and obj.get("id") == task_id and seen(obj):
            return True


def _check_deadline(deadline: float | None, task_id: str, phase: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise CliError(f"gave up waiting for task {task_id} (still {phase})")
