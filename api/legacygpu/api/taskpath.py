"""The task path's two busiest requests, answered without FastAPI's routing.

Every task costs the facade two requests: its submission (``POST
/cluster/tasks/submit``) and its worker's report (``POST
/cluster/workers/{id}/completions``, a batch under load, one outcome when
the cluster is idle). Through FastAPI each paid for the matching of every
route, the dependency injection of the token check, the exception
middleware and a ``Request`` object: more CPU than the coordinator's own
work on the task, and on an idle cluster a good part of a task's latency.
:class:`TaskPath` is a plain ASGI middleware, like :mod:`legacygpu.api.inferpath`
for ``/v2`` (inside the request counter and the body-size limit, so both
still see every request), that answers the common case of those two
itself, through the same schemas and the very functions the routes' bodies
are (:func:`legacygpu.api.routes.tasks.submit`,
:func:`legacygpu.api.routes.workers.complete`), so the two cannot drift apart:

* an authorised request whose JSON body fits the route's schema is parsed
  (``json.loads`` then the pydantic model, as FastAPI does), handed to the
  route's function, and answered with the route's status and body; a core
  error or an ``HTTPException`` (a worker reporting for another: 403) gets
  the status and ``{"detail": ...}`` body the facade's error handlers give
  it, and anything else propagates to the same unexpected-error handler (a
  503 for a busy database, else a 500);
* anything else (no token or another role's, a body that is not JSON,
  is nested too deep to parse or does not fit the schema, another content
  type) goes on to FastAPI with the body it sent, where the route gives its
  usual 400/401/403/422 answer in its own words. The caller's role is
  checked before the body is parsed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from legacygpu.api.deps import Role, bearer_token, role_of
from legacygpu.api.errors import error_response, status_for
from legacygpu.api.limits import replay
from legacygpu.api.routes import tasks, workers
from legacygpu.api.schemas import CompletionBatch, TaskCreate
from legacygpu.core.errors import LegacyGPUError
from legacygpu.core.oip.asgi import read_body, send_response

__all__ = ["TaskPath", "install"]

_SUBMIT = "/cluster/tasks/submit"
_COMPLETIONS = re.compile(r"^/cluster/workers/(?P<worker_id>[^/]+)/completions$")
_JSON = [(b"content-type", b"application/json")]

_Answer = tuple[int, bytes]
_Act = Callable[[], Awaitable[_Answer]]
_Handler = Callable[[Scope, bytes], _Act]
"""Checks the caller, then parses the body (raising :class:`_NotMine`, a ``ValueError`` or a ``RecursionError`` to
pass it on), and returns what to do: only that part touches the backend, so a request is never passed on after
it did. The caller comes first: nobody without the role makes the facade parse anything."""


class _NotMine(Exception):
    """This request is FastAPI's to answer (its error in its own words)."""


class TaskPath:
    """ASGI middleware: answers authorised task submissions and worker reports itself, passes the rest on."""

    def __init__(self, app: ASGIApp, routes: dict[str, APIRoute]) -> None:
        self.app = app
        self._routes = routes  # for the request counter's route label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handler(scope)
        if handler is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        try:
            act = handler(scope, body)
        # ValueError: not JSON (UnicodeDecodeError too), or not the schema; RecursionError: nested too deep
        except (_NotMine, ValueError, RecursionError):
            await self.app(scope, replay(body, receive), send)
            return
        try:
            status, answer = await act()
        except LegacyGPUError as exc:  # what install_error_handlers answers for it
            await error_response(status_for(exc), str(exc))(scope, receive, send)
            return
        except HTTPException as exc:  # likewise
            await error_response(exc.status_code, str(exc.detail), exc.headers)(scope, receive, send)
            return
        await send_response(send, status, _JSON, answer)

    def _handler(self, scope: Scope) -> _Handler | None:
        """The handler of a POST this middleware answers, with the route put in the scope; None for the rest."""
        if scope["type"] != "http" or scope["method"] != "POST" or not _is_json(scope):
            return None
        path = scope["path"]
        if path == _SUBMIT:
            scope["route"] = self._routes["submit"]
            return self._submit
        if match := _COMPLETIONS.match(path):
            scope["route"] = self._routes["completions"]
            scope["path_params"] = {"worker_id": match["worker_id"]}
            return self._complete
        return None

    @staticmethod
    def _submit(scope: Scope, body: bytes) -> _Act:
        if _role(scope) not in (Role.USER, Role.ADMIN):
            raise _NotMine
        task = TaskCreate.model_validate(json.loads(body))
        state = scope["app"].state

        async def act() -> _Answer:
            created = await tasks.submit(task, state.backend, state.settings)
            return _status(scope), created.model_dump_json().encode()

        return act

    @staticmethod
    def _complete(scope: Scope, body: bytes) -> _Act:
        worker_id = scope["path_params"]["worker_id"]
        if _role(scope, worker_id) != Role.WORKER:
            raise _NotMine
        batch = CompletionBatch.model_validate(json.loads(body))
        backend = scope["app"].state.backend

        async def act() -> _Answer:
            answered = await workers.complete(worker_id, batch, backend)
            return _status(scope), answered.model_dump_json().encode()

        return act


def _status(scope: Scope) -> int:
    """The status the route answers with when all went well (its decorator's, else 200)."""
    return scope["route"].status_code or 200


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == b"application/json"
    return False


def _role(scope: Scope, worker_id: str | None = None) -> Role | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = bearer_token(value)
            return None if token is None else role_of(HTTPConnection(scope), token, worker_id)
    return None


def install(app: FastAPI) -> None:
    """Add :class:`TaskPath` to ``app`` (which includes the tasks and workers routers); call it before the
    body-size limit and the request counter are added, so that they wrap it."""
    by_name = {r.name: r for r in (*tasks.router.routes, *workers.router.routes) if isinstance(r, APIRoute)}
    app.add_middleware(TaskPath, routes={"submit": by_name["submit_task"], "completions": by_name["complete_tasks"]})
