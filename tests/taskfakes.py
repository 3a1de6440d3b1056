"""The local coordinator's task channel, faked, for tests that drive :class:`LocalBackend` directly.

The real channel is an HTTP request to the worker's serving port
(:class:`legacygpu.api.backends.local.channel.HttpChannel`); the
integration tests (tests/integration/test_task_push.py) run it between real
processes. Here :class:`FakeChannel` records each push so a test can play
the worker: :func:`take` is what a worker receives, :func:`complete` what it
reports. :class:`FakeWorker` plays a worker over real HTTP against a real facade process.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from legacygpu.api.backends.local import LocalBackend
from legacygpu.api.backends.local.channel import Delivery, Refused
from legacygpu.api.schemas import ClaimedTask, Completion, TaskCompletion, TaskPublic
from legacygpu.core.errors import ConflictError

SERVING: dict[str, Any] = {"serving": {"rest": "http://127.0.0.1:9"}}
"""Stats of a worker that announced a serving endpoint (pushes go there); never dialled by the fake."""


class FakeChannel:
    """Records pushes instead of sending them; refuses those to the workers in ``refuse``."""

    def __init__(self) -> None:
        self.pushes: list[Delivery] = []
        self.refuse: set[str] = set()
        self.run_now: Callable[[Delivery], list[TaskCompletion]] | None = None
        """Plays a worker that runs what it is pushed before answering: its outcomes come back in the answer."""
        self._unread: dict[str, list[ClaimedTask]] = {}

    async def push(self, delivery: Delivery) -> list[TaskCompletion]:
        if delivery.worker_id in self.refuse:
            raise Refused(f"worker {delivery.worker_name} answered 503: draining")
        self.pushes.append(delivery)
        if self.run_now is not None:
            return self.run_now(delivery)
        self._unread.setdefault(delivery.worker_id, []).extend(delivery.tasks)
        return []

    def take(self, worker_id: str) -> list[ClaimedTask]:
        return self._unread.pop(worker_id, [])


def connect(backend: LocalBackend) -> FakeChannel:
    channel = FakeChannel()
    backend.connect_workers(channel)
    return channel


async def run_pass(backend: LocalBackend) -> None:
    """One coordinator pass as the backend's loop makes it (reconcile, then start what it placed), with its
    pushes made and answered before this returns (the loop sends them without waiting)."""
    deliveries = backend._pass()
    await asyncio.gather(*(backend._push(d) for d in deliveries))


async def take(backend: LocalBackend, worker_id: str) -> list[ClaimedTask]:
    """What the worker has received so far: a pass is made and its pushes sent first."""
    await run_pass(backend)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    return channel.take(worker_id)


async def complete(backend: LocalBackend, task_id: str, completion: Completion) -> TaskPublic:
    """One outcome, as a batch of one; ConflictError (as the lifecycle words it) when it is refused."""
    [answer] = await backend.complete_tasks(
        completion.worker_id, [TaskCompletion(task_id=task_id, **completion.model_dump())]
    )
    if answer.status == "refused":
        raise ConflictError(answer.detail)
    return await backend.get_task(task_id)


class FakeWorker:
    """A worker played by the test over real HTTP: registers with a facade, heartbeats, and takes the tasks
    pushed to its own small HTTP server on loopback, so a test can hold a task as long as it likes.

    ``pushes`` records each push's body and Authorization header; :meth:`next_task` waits for a task;
    :meth:`report` posts outcomes to the facade as a worker does.
    """

    def __init__(self, api: httpx.Client, join: httpx.Client, name: str = "fake", heartbeat: float = 0.3) -> None:
        self.pushes: queue.Queue[tuple[dict[str, Any], str]] = queue.Queue()
        self.tasks: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                received.pushes.put((body, self.headers.get("authorization", "")))
                for task in body["tasks"]:
                    received.tasks.put(task)
                reply = json.dumps({"accepted": len(body["tasks"])}).encode()
                self.send_response(202)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._threads = [threading.Thread(target=self._server.serve_forever, daemon=True)]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._api = api
        self._threads[0].start()
        stats = {"serving": {"rest": self.url}}
        body = {"name": name, "host": "h", "pid": 1, "device": {"name": "d"}, "concurrency": 1, "stats": stats}
        registered = join.post("/cluster/workers/register", json=body).json()
        self.id: str = registered["id"]
        self.auth = {"Authorization": f"Bearer {registered['token']}"}
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(heartbeat):
                api.post(f"/cluster/workers/{self.id}/heartbeat", json={"stats": stats}, headers=self.auth)

        self._threads.append(threading.Thread(target=beat, daemon=True))
        self._threads[1].start()

    def next_task(self, timeout: float = 30) -> dict[str, Any]:
        return self.tasks.get(timeout=timeout)

    def report(self, *outcomes: dict[str, Any]) -> httpx.Response:
        """Post outcomes (``task_id``, ``attempt`` and ``result`` or ``error``) as this worker."""
        batch = [{"worker_id": self.id, **o} for o in outcomes]
        return self._api.post(f"/cluster/workers/{self.id}/completions", json={"completed": batch}, headers=self.auth)

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._api.delete(f"/cluster/workers/{self.id}", headers=self.auth)
