"""The facade's end of the task channel (:class:`HttpChannel`) against real loopback servers.

A push goes to the worker's own task endpoint (``legacygpu.worker.taskchannel``, served by uvicorn as on a
worker) or to a raw socket that misbehaves on purpose; each test checks which of the three ends a push
has (taken, :class:`Refused`, :class:`Unanswered`), since that decides whether its tasks go back to the
queue at no cost or stay with the worker.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from helpers import free_port, raw_server, serve_in_thread
from starlette.applications import Starlette

from legacygpu.api.backends.local.channel import Delivery, HttpChannel, Refused, Unanswered
from legacygpu.api.schemas import ClaimedTask, TaskCompletion
from legacygpu.api.workerhttp import WorkerPool
from legacygpu.worker import taskchannel
from legacygpu.worker.taskchannel import Inbox, task_routes

TASK = ClaimedTask(id="task-1", model="digits", attempt=1, inputs=[{"name": "x"}], parameters={})


def delivery(url: str, worker_id: str = "w-1", tasks: tuple[ClaimedTask, ...] = (TASK,)) -> Delivery:
    return Delivery(worker_id=worker_id, worker_name="local-0", url=url, tasks=tasks)


@pytest.fixture
def inbox() -> Inbox:
    inbox = Inbox()
    inbox.open("w-1", "own-token")
    return inbox


@pytest.fixture
def worker(inbox: Inbox) -> Iterator[str]:
    with serve_in_thread(Starlette(routes=task_routes(inbox))) as url:
        yield url


def channel(pool: WorkerPool | None = None, token: str = "own-token") -> HttpChannel:
    return HttpChannel(lambda worker_id: token, pool)


async def test_pushes_queue_their_tasks_on_the_worker_in_order(inbox: Inbox, worker: str) -> None:
    pushing = channel()
    second = TASK.model_copy(update={"id": "task-2", "attempt": 2})
    await pushing.push(delivery(worker))
    await pushing.push(delivery(worker, tasks=(second,)))
    await pushing.close()
    got = [inbox.get(timeout=1), inbox.get(timeout=1)]
    assert got == [TASK.model_dump(), second.model_dump()] and inbox.held() == ["task-1", "task-2"]


async def test_a_worker_that_answers_an_error_refused_the_tasks(inbox: Inbox, worker: str) -> None:
    with pytest.raises(Refused, match=r"answered 409: .*this worker is w-1, not w-2"):
        await channel().push(delivery(worker, worker_id="w-2"))
    with pytest.raises(Refused, match="answered 401"):
        await channel(token="another-workers-token").push(delivery(worker))
    inbox.close()  # draining
    with pytest.raises(Refused, match="answered 503"):
        await channel().push(delivery(worker))
    assert inbox.empty() and inbox.held() == []


async def test_no_connection_means_refused() -> None:
    with pytest.raises(Refused, match="unreachable"):
        await channel().push(delivery(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(Refused, match="not an http:// URL"):
        await channel().push(delivery("https://127.0.0.1:1"))


async def test_a_push_that_overtakes_the_registrations_answer_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The facade schedules onto a worker once it has registered it; its push can reach the worker before the
    registration's answer (the id and token the push is checked against) does."""
    class Watched(Inbox):
        def __init__(self) -> None:
            super().__init__()
            self.waited = threading.Event()

        def settled(self, timeout: float) -> bool:
            if timeout:  # a push waits for the registration's answer
                self.waited.set()
            return super().settled(timeout)

    inbox = Watched()
    inbox.registering()

    def answer_once_the_push_waits() -> None:
        if inbox.waited.wait(10):
            inbox.open("w-1", "own-token")

    with serve_in_thread(Starlette(routes=task_routes(inbox))) as url:
        answer = threading.Thread(target=answer_once_the_push_waits)
        answer.start()
        await channel().push(delivery(url))
        answer.join()
        assert inbox.get(timeout=1) == TASK.model_dump() and inbox.held() == ["task-1"]

        monkeypatch.setattr(taskchannel, "REGISTRATION_WAIT_SECONDS", 0.2)
        inbox.registering()  # registering again (the facade forgot this worker), and no answer comes
        with pytest.raises(Refused, match=r"answered 409: .*this worker is w-1, not w-2"):
            await channel().push(delivery(url, worker_id="w-2"))
        assert inbox.empty()


def _read_then(close: bool) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        conn.recv(65536)  # the whole push, then no answer
        if not close:
            conn.recv(1)  # until the client gives up
    return handle


async def test_a_push_that_arrived_and_got_no_answer_is_unanswered() -> None:
    silent, _ = raw_server(_read_then(close=False))
    with pytest.raises(Unanswered, match="no whole answer"):
        await channel(WorkerPool(keepalive_seconds=4, timeout=0.3)).push(delivery(silent))
    closing, _ = raw_server(_read_then(close=True))
    with pytest.raises(Unanswered, match="closed with no answer"):
        await channel().push(delivery(closing))


async def test_the_worker_queues_a_push_once_its_answer_is_sent() -> None:
    """So that the task loop does not start the task while the serving thread still writes the answer
    (the two would pass the interpreter lock back and forth)."""
    events: list[str] = []

    class Recording(Inbox):
        def put(self, tasks: list[dict[str, object]]) -> None:
            events.append("queued")
            super().put(tasks)

    inbox = Recording()
    inbox.open("w-1", "own-token")
    [route] = task_routes(inbox)
    body = json.dumps({"worker_id": "w-1", "tasks": [TASK.model_dump()]}).encode()
    scope = {"type": "http", "method": "POST", "path": "/internal/tasks", "headers": [
        (b"authorization", b"Bearer own-token"), (b"content-type", b"application/json")]}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        events.append(str(message["type"]))

    await route.handle(scope, receive, send)  # type: ignore[arg-type]
    assert events == ["http.response.start", "http.response.body", "queued"] and inbox.held() == ["task-1"]


def _ran(task: dict[str, object], worker_id: str = "w-1") -> dict[str, object]:
    """The outcome a worker that ran ``task`` at once answers with."""
    return {"task_id": task["id"], "worker_id": worker_id, "attempt": task["attempt"], "result": {"top": 7},
            "compute_ms": 0.2}


def _serving(inbox: Inbox,
             run_now: Callable[[dict[str, object]], dict[str, object] | None]) -> AbstractContextManager[str]:
    return serve_in_thread(Starlette(routes=task_routes(inbox, run_now)))


async def test_a_lone_task_the_worker_runs_at_once_comes_back_in_the_answer(inbox: Inbox) -> None:
    asked: list[str] = []

    def run_now(task: dict[str, object]) -> dict[str, object]:
        asked.append(str(task["id"]))
        return _ran(task)

    second = TASK.model_copy(update={"id": "task-2"})
    with _serving(inbox, run_now) as url:
        [done] = await channel().push(delivery(url))
        assert done == TaskCompletion(task_id="task-1", worker_id="w-1", attempt=1, result={"top": 7}, compute_ms=0.2)
        assert inbox.empty() and inbox.held() == [], "run, not queued: the worker holds nothing more"
        assert await channel().push(delivery(url, tasks=(TASK, second))) == [], "several tasks are queued"
    assert asked == ["task-1"]
    assert inbox.held() == ["task-1", "task-2"]


async def test_a_task_the_worker_cannot_run_at_once_is_queued(inbox: Inbox) -> None:
    with _serving(inbox, lambda task: None) as url:
        assert await channel().push(delivery(url)) == []
    assert inbox.get(timeout=1) == TASK.model_dump() and inbox.held() == ["task-1"]


@pytest.mark.parametrize("answered", [
    lambda task: _ran(task, worker_id="w-2"),  # another worker's
    lambda task: {**_ran(task), "task_id": "task-9"},  # a task not pushed
    lambda task: {"task_id": task["id"]},  # unreadable: no worker, no attempt
])
async def test_an_outcome_not_of_the_pushed_task_and_worker_is_not_applied(
    inbox: Inbox, answered: Callable[[dict[str, object]], dict[str, object]]
) -> None:
    with _serving(inbox, answered) as url:
        assert await channel().push(delivery(url)) == []
