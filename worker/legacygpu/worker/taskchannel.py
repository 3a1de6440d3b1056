"""The worker's end of the task channel: the facade pushes tasks here; the worker's task loop takes them.

In local mode the coordinator does not wait for a worker to ask for work:
after each scheduling pass it POSTs the tasks it started for this worker,
several at once, to ``POST /internal/tasks`` on the worker's REST serving
port (the same port, and on the facade's side the same pool of persistent
connections, as the ``/v2`` requests it forwards)::

    {"worker_id": "w-1a2b3c4d", "tasks": [{"id", "model", "attempt", "inputs", "parameters"}, ...]}

The request must carry the worker's own token (``Authorization: Bearer``),
the one the facade issued at registration: the route is on a port without
authentication otherwise, and nobody but the facade may hand this worker
work. Answers:

* 202 ``{"accepted": n}``: the tasks are queued in the :class:`Inbox`;
* 200 ``{"completed": [outcome]}`` (a completions batch): a lone task that the
  worker could run at once, idle as it was (``run_now``, see
  :meth:`~legacygpu.worker.local_worker.LocalWorker.run_now`), ran before the
  answer, which carries its outcome as a completions batch would: on an
  idle cluster this spares the task two thread hand-offs in the worker and a
  request of its own to report it. The worker does not hold such a task: if
  the answer is lost on the way, the facade sees a push unanswered and a
  task its worker does not hold, and puts it back in the queue (below);
* 401 for a missing or wrong token, 409 for another worker id (the push
  was meant for an earlier registration of this process);
* 503 while the worker is not registered yet, or is draining or stopping:
  it takes nothing new (the facade puts the tasks back in the queue);
  a push that arrives while the worker's registration request is still
  waiting for its answer waits for that answer first (up to
  :data:`REGISTRATION_WAIT_SECONDS`): the facade schedules onto a worker as
  soon as it has registered it, and its push can overtake the registration's
  answer, which carries the id and token the push is checked against;
* 400 for a body that is not that shape.

Otherwise the handler only queues, never runs anything, so it answers at once; it
queues the tasks once the answer is sent (the worker's own checks, above,
come first). Queued earlier, the task loop would start running the first
task while this thread still writes the answer, and the two would hand the
interpreter lock back and forth (each hand-off a wake-up on another CPU)
on a lone task's critical path. A worker that stops in between holds the
tasks no more than one that stops just after queueing them: either way the
facade takes them back (:meth:`Inbox.held`, below, and deregistering).
The :class:`Inbox` also knows every task the worker still holds (queued,
running, or finished and not yet acknowledged by the facade), which the
worker's heartbeat reports, so that a push the facade started but never
finished (it stopped mid-push) is noticed and undone.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import threading
from collections.abc import Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["REGISTRATION_WAIT_SECONDS", "TASKS_PATH", "Inbox", "RunNow", "task_routes"]

TASKS_PATH = "/internal/tasks"
REGISTRATION_WAIT_SECONDS = 5.0
"""How long a push waits for the answer to a registration in flight (the facade waits 10 s for a push's answer)."""
_TASK_FIELDS = {"id": str, "model": str, "attempt": int, "inputs": list, "parameters": dict}


class Inbox:
    """Tasks pushed to this worker and not yet run; safe to use from the serving loop and the task loop."""

    def __init__(self) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._worker_id: str | None = None
        self._token: str | None = None
        self._accepting = False
        self._settled = threading.Event()  # cleared while a registration waits for its answer
        self._settled.set()

    def registering(self) -> None:
        """A registration request is on its way: pushes wait for its answer (:meth:`open`) before their check."""
        self._settled.clear()

    def settled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no registration to be in flight; whether none is."""
        return self._settled.wait(timeout)

    def open(self, worker_id: str, token: str) -> None:
        """Take pushes for this registration; anything held for an earlier one is dropped (it was released)."""
        with self._lock:
            self._worker_id, self._token, self._accepting = worker_id, token, True
            self._held.clear()
            while not self._queue.empty():
                self._queue.get_nowait()
        self._settled.set()

    def close(self) -> None:
        """Take nothing new (draining, stopping); what is queued stays to be run."""
        with self._lock:
            self._accepting = False
        self._settled.set()

    @property
    def accepting(self) -> bool:
        """Whether pushes are taken: registered, and not draining or stopping."""
        with self._lock:
            return self._accepting

    def check(self, worker_id: str, authorization: str) -> tuple[int, str]:
        """Whether a push for ``worker_id`` with this ``Authorization`` header is taken: ``(0, "")`` or an error."""
        with self._lock:
            token, own, accepting = self._token, self._worker_id, self._accepting
        if token is None or own is None:
            return 503, "this worker is not registered yet"
        if not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            return 401, "pushes need this worker's own token"
        if worker_id != own:
            return 409, f"this worker is {own}, not {worker_id}"
        if not accepting:
            return 503, "this worker is draining or stopping: it takes no new tasks"
        return 0, ""

    def put(self, tasks: list[dict[str, Any]]) -> None:
        with self._lock:
            self._held.update(t["id"] for t in tasks)
        for task in tasks:
            self._queue.put(task)

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next task to run, waiting up to ``timeout`` seconds; None when there is none."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def empty(self) -> bool:
        return self._queue.empty()

    def done(self, task_ids: list[str]) -> None:
        """The facade has these tasks' outcomes (or refused them): no longer held."""
        with self._lock:
            self._held.difference_update(task_ids)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)


def _parse(body: bytes) -> tuple[str, list[dict[str, Any]]]:
    try:
        push = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc
    if not isinstance(push, dict) or not isinstance(push.get("worker_id"), str) or not isinstance(
        push.get("tasks"), list
    ):
        raise ValueError('the body must be {"worker_id": str, "tasks": [...]}')
    for i, task in enumerate(push["tasks"]):
        if not isinstance(task, dict):
            raise ValueError(f"tasks[{i}] is not an object")
        for name, kind in _TASK_FIELDS.items():
            if not isinstance(task.get(name), kind):
                raise ValueError(f"tasks[{i}].{name} must be a {kind.__name__}")
    return push["worker_id"], push["tasks"]


RunNow = Callable[[dict[str, Any]], "dict[str, Any] | None"]
"""Runs a pushed task at once and returns its outcome, or returns None when the task must wait in the inbox."""


def task_routes(inbox: Inbox, run_now: RunNow | None = None) -> list[Route]:
    """The task channel's route, to add to the worker's REST serving app; ``run_now`` answers a lone task."""

    async def push(request: Request) -> Response:
        try:
            worker_id, tasks = _parse(await request.body())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not inbox.settled(0):  # the registration's answer (this push's id and token) is still on its way
            await asyncio.to_thread(inbox.settled, REGISTRATION_WAIT_SECONDS)
        code, why = inbox.check(worker_id, request.headers.get("authorization", ""))
        if code:
            return JSONResponse({"error": why}, status_code=code)
        if run_now is not None and len(tasks) == 1 and (outcome := run_now(tasks[0])) is not None:
            return JSONResponse({"completed": [outcome]})

        async def queue() -> None:  # a coroutine: a plain function would go to a thread pool
            inbox.put(tasks)

        return JSONResponse({"accepted": len(tasks)}, status_code=202, background=BackgroundTask(queue))

    return [Route(TASKS_PATH, push, methods=["POST"])]
