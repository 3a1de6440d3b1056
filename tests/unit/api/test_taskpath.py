"""The task path's bare ASGI answers: what it answers itself, and what it hands to FastAPI untouched.

Driven as ASGI with a recording inner app (where FastAPI would be) and a
recording backend, so each test sees which of the two answered and what
the backend was asked.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.types import Message, Scope

from legacygpu.api.deps import Role, bearer_token, worker_token
from legacygpu.api.limits import replay
from legacygpu.api.routes import tasks as routes_tasks
from legacygpu.api.routes import workers as routes_workers
from legacygpu.api.schemas import CompletionAnswer, CompletionBatch, CompletionsAnswered, TaskCreate, TaskPublic
from legacygpu.api.taskpath import TaskPath
from legacygpu.core.config import Settings
from legacygpu.core.errors import UnknownModelError

SECRET = b"s" * 32
ROUTES = {"submit": SimpleNamespace(status_code=201), "completions": SimpleNamespace(status_code=None)}
"""Stand-ins for the FastAPI routes: the request counter reads its label from them, the answer its status."""
TASK = {"model": "m", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: Exception | None = None

    async def submit_task(self, task: Any) -> TaskPublic:
        self.calls.append(("submit", task))
        if self.fail:
            raise self.fail
        return TaskPublic(id="task-1", model=task.model, phase="Queued", created_at=datetime(2026, 1, 1, tzinfo=UTC))

    async def complete_tasks(self, worker_id: str, completed: Any) -> list[CompletionAnswer]:
        self.calls.append(("complete", (worker_id, [c.task_id for c in completed])))
        return [CompletionAnswer(task_id=c.task_id, status="applied") for c in completed]


class Inner:
    """Where FastAPI would be: records what reached it, body included."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.route: object = None
        """The route the request was labelled with (for the request counter)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 499, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


@pytest.fixture
def backend() -> Backend:
    return Backend()


async def call(backend: Backend, path: str, body: bytes, token: str | None = "user-token",
               content_type: bytes = b"application/json") -> tuple[int, bytes, Inner]:
    state = SimpleNamespace(backend=backend, settings=Settings(), worker_secret=SECRET,
                            tokens={Role.USER: "user-token", Role.ADMIN: "admin-token", Role.JOIN: "join-token"})
    headers = [(b"content-type", content_type)]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "app": SimpleNamespace(state=state)}
    inner = Inner()
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await TaskPath(inner, routes=ROUTES)(scope, receive, send)  # type: ignore[arg-type]
    inner.route = scope.get("route")
    return sent[0]["status"], sent[1]["body"], inner


async def test_an_authorised_submit_is_answered_here(backend: Backend) -> None:
    status, body, inner = await call(backend, "/cluster/tasks/submit", json.dumps(TASK).encode())
    assert (status, json.loads(body)["id"], json.loads(body)["phase"]) == (201, "task-1", "Queued")
    assert inner.bodies == [] and [name for name, _ in backend.calls] == ["submit"]
    assert inner.route is ROUTES["submit"], "the request counter labels it with the route's template"


@pytest.mark.parametrize(("body", "token", "content_type"), [
    (json.dumps({"model": "m"}).encode(), "user-token", b"application/json"),  # not the schema: FastAPI's 422
    (b"{not json", "user-token", b"application/json"),
    (b"[" * 100_000, "user-token", b"application/json"),  # nested too deep for json.loads: FastAPI's 400
    (b"[" * 100_000, None, b"application/json"),  # and without a token it is not even parsed here
    (json.dumps(TASK).encode(), None, b"application/json"),  # FastAPI's 401
    (json.dumps(TASK).encode(), "join-token", b"application/json"),  # another role: FastAPI's 403
    (json.dumps(TASK).encode(), "user-token", b"text/plain"),
])
async def test_anything_else_reaches_fastapi_with_its_body_and_the_backend_is_not_called(
    backend: Backend, body: bytes, token: str | None, content_type: bytes
) -> None:
    status, _, inner = await call(backend, "/cluster/tasks/submit", body, token, content_type)
    assert status == 499 and inner.bodies == [body] and backend.calls == []


async def test_a_core_error_gets_the_facades_status_and_detail_and_is_not_passed_on(backend: Backend) -> None:
    backend.fail = UnknownModelError("unknown model 'm'")
    status, body, inner = await call(backend, "/cluster/tasks/submit", json.dumps(TASK).encode())
    assert (status, json.loads(body)) == (422, {"detail": "unknown model 'm'"}) and inner.bodies == []


async def test_an_unexpected_error_propagates_rather_than_submitting_twice(backend: Backend) -> None:
    backend.fail = ValueError("a bug")
    with pytest.raises(ValueError, match="a bug"):
        await call(backend, "/cluster/tasks/submit", json.dumps(TASK).encode())
    assert len(backend.calls) == 1


async def test_a_workers_report_is_answered_here_only_with_its_own_token_and_outcomes(backend: Backend) -> None:
    own = worker_token(SECRET, "w-1")
    batch = {"completed": [{"task_id": "t1", "worker_id": "w-1", "attempt": 1, "result": {}}]}
    status, body, inner = await call(backend, "/cluster/workers/w-1/completions", json.dumps(batch).encode(), own)
    assert (status, json.loads(body)) == (200, {"data": [{"task_id": "t1", "status": "applied", "detail": ""}]})
    assert backend.calls == [("complete", ("w-1", ["t1"]))] and inner.bodies == []
    assert inner.route is ROUTES["completions"]
    for path, token in [("/cluster/workers/w-2/completions", own),  # another worker's path
                        ("/cluster/workers/w-1/completions", "user-token")]:
        status, _, inner = await call(backend, path, json.dumps(batch).encode(), token)
        assert status == 499 and inner.bodies == [json.dumps(batch).encode()], path
    assert len(backend.calls) == 1


async def test_an_outcome_reported_as_another_worker_gets_the_routes_403_and_nothing_is_applied(
    backend: Backend,
) -> None:
    sent = {"completed": [{"task_id": "t1", "worker_id": "w-2", "attempt": 1, "result": {}}]}
    status, body, inner = await call(backend, "/cluster/workers/w-1/completions", json.dumps(sent).encode(),
                                     worker_token(SECRET, "w-1"))
    assert status == 403 and "a worker may report only its own outcomes" in json.loads(body)["detail"]
    assert backend.calls == [] and inner.bodies == []


async def test_the_route_and_the_task_path_run_the_same_function(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each route's body is one function that the task path calls too, so their answers cannot drift apart."""
    ran: list[str] = []

    async def submit(task: Any, backend: Any, settings: Any) -> TaskPublic:
        ran.append("submit")
        return TaskPublic(id="task-9", model=task.model, phase="Queued", created_at=datetime(2026, 1, 1, tzinfo=UTC))

    async def complete(worker_id: str, batch: Any, backend: Any) -> CompletionsAnswered:
        ran.append("complete")
        return CompletionsAnswered(data=[])

    monkeypatch.setattr(routes_tasks, "submit", submit)
    monkeypatch.setattr(routes_workers, "complete", complete)
    status, body, _ = await call(backend, "/cluster/tasks/submit", json.dumps(TASK).encode())
    assert (status, json.loads(body)["id"]) == (201, "task-9")
    batch = {"completed": [{"task_id": "t1", "worker_id": "w-1", "attempt": 1, "result": {}}]}
    status, _, _ = await call(backend, "/cluster/workers/w-1/completions", json.dumps(batch).encode(),
                              worker_token(SECRET, "w-1"))
    assert status == 200
    await routes_tasks.submit_task(TaskCreate.model_validate(TASK), backend, Settings())  # type: ignore[arg-type]
    await routes_workers.complete_tasks("w-1", CompletionBatch.model_validate(batch), backend)  # type: ignore[arg-type]
    assert ran == ["submit", "complete", "submit", "complete"] and backend.calls == []


async def test_a_report_nested_too_deep_reaches_fastapi(backend: Backend) -> None:
    body = b'{"completed": ' + b"[" * 100_000
    status, _, inner = await call(backend, "/cluster/workers/w-1/completions", body, worker_token(SECRET, "w-1"))
    assert status == 499 and inner.bodies == [body] and backend.calls == []


def test_the_bearer_token_of_a_raw_authorization_header() -> None:
    assert bearer_token(b"Bearer abc") == "abc" and bearer_token(b"bearer  abc ") == "abc", "scheme in any case"
    assert bearer_token(b"Basic abc") is None and bearer_token(b"abc") is None


async def test_a_body_read_ahead_is_replayed_first_then_what_the_server_sends() -> None:
    later: list[Message] = [{"type": "http.disconnect"}]

    async def receive() -> Message:
        return later.pop()

    replayed = replay(b"read ahead", receive)
    assert await replayed() == {"type": "http.request", "body": b"read ahead", "more_body": False}
    assert await replayed() == {"type": "http.disconnect"}
