"""Which worker the facade's ``/v2`` requests go to, and what they cost the cluster's database.

A real facade (``create_app`` with its real :class:`LocalBackend` and SQLite store) on a real uvicorn
socket; two stand-in workers, each a real uvicorn server on loopback, registered with the facade over
HTTP as a worker registers (join token, its serving endpoint in its stats). Each worker answers an
inference with its own name, and holds a request whose body is ``hold`` until the test lets it go, so
the test decides how many requests each worker has outstanding.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from helpers import JOIN_TOKEN, TOKEN, serve_in_thread, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from legacygpu.api.backends.local import LocalBackend
from legacygpu.core.scheduling import STRATEGIES

INFER = "/v2/models/m/infer"


@dataclass
class Worker:
    """A stand-in worker's ``/v2`` infer endpoint: answers with its name; a ``hold`` request waits for release."""

    name: str
    held: int = 0
    """Requests it holds now."""
    answered: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    async def infer(self, request: Request) -> PlainTextResponse:
        if await request.body() == b"hold":
            self.held += 1
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            self.held -= 1
        self.answered += 1
        return PlainTextResponse(self.name)


@dataclass
class Facade:
    client: httpx.Client
    backend: LocalBackend
    workers: list[Worker]


@contextmanager
def running_facade(tmp_path: Path, strategy: str) -> Iterator[Facade]:
    from legacygpu.api import create_app
    from legacygpu.core.config import Settings

    settings = Settings(data_dir=tmp_path / "data", api_token=TOKEN, join_token=JOIN_TOKEN,
                        scheduling_strategy=strategy, heartbeat_timeout_seconds=3600)  # no heartbeats here
    app = create_app(settings)
    workers = [Worker("a"), Worker("b")]
    with ExitStack() as stack:
        for worker in workers:
            worker.url = stack.enter_context(serve_in_thread(
                Starlette(routes=[Route(INFER, worker.infer, methods=["POST"])]), lifespan="off"))
        url = stack.enter_context(serve_in_thread(app))
        client = stack.enter_context(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                                                  timeout=30))
        for worker in workers:
            register(client, worker.name, worker.url)
        for worker in workers:
            stack.callback(worker.release.set)  # nothing left hanging on the way out
        yield Facade(client, app.state.backend, workers)


def register(client: httpx.Client, name: str, url: str) -> None:
    stats = {"serving": {"rest": url}, "models_loaded": ["m"]}
    body = {"name": name, "host": "h", "pid": 1, "device": {"name": "d"}, "concurrency": 1, "stats": stats}
    response = client.post("/cluster/workers/register", json=body, headers={"Authorization": f"Bearer {JOIN_TOKEN}"})
    assert response.status_code == 201, response.text


@pytest.fixture(params=sorted(STRATEGIES))
def facade(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Facade]:
    """A facade whose cluster schedules tasks with each of the strategies in turn."""
    with running_facade(tmp_path, request.param) as facade:
        yield facade


def test_v2_goes_to_the_worker_with_the_fewest_outstanding_requests_whatever_the_task_strategy(
        facade: Facade) -> None:
    """Least outstanding requests is the /v2 path's rule, and the cluster's ``scheduling_strategy`` (for tasks)
    does not change it: round-robin, for one, would send every other request below to the busier worker."""
    a, b = facade.workers
    assert facade.backend.strategy.name == facade.backend.settings.scheduling_strategy  # the tasks' own strategy

    def send(body: bytes) -> str:
        response = facade.client.post(INFER, content=body)
        assert response.status_code == 200, response.text
        return response.text

    with ThreadPoolExecutor(8) as pool:
        try:
            first = [pool.submit(send, b"hold") for _ in range(6)]
            wait_until(lambda: a.held + b.held == 6, timeout=30, what="six held requests to reach the workers")
            assert (a.held, b.held) == (3, 3), "six requests at once are shared out evenly"

            b.release.set()  # b answers its three: a still has three outstanding, b none
            wait_until(lambda: sum(f.done() for f in first) == 3, timeout=30, what="b's three answers")
            assert sorted(f.result() for f in first if f.done()) == ["b", "b", "b"]
            b.release.clear()

            # One at a time, each waiting for its request to arrive: all three go to b until it has as many as a.
            later: list[Future[str]] = []
            for n in range(1, 4):
                later.append(pool.submit(send, b"hold"))
                wait_until(lambda n=n: a.held + b.held == 3 + n, timeout=30, what=f"request {n} to reach a worker")
                assert (a.held, b.held) == (3, n), f"request {n} went to the worker with more outstanding"

            a.release.set()
            b.release.set()
            assert sorted(f.result(timeout=30) for f in first + later) == ["a"] * 3 + ["b"] * 6
        finally:  # a failed check leaves no request held for the pool's exit to wait on
            a.release.set()
            b.release.set()


def _total_changes(backend: LocalBackend) -> int:
    """Rows inserted, updated or deleted through the store's connection since it opened (a row updated to the
    values it had counts too)."""
    store = backend.store
    with store._lock:
        return store._db.total_changes


def _data_version(db: sqlite3.Connection) -> int:
    """Changes whenever another connection (the store's, or any other one) commits a change to the file."""
    return int(db.execute("PRAGMA data_version").fetchall()[0][0])


def test_v2_inference_writes_nothing_to_the_database(tmp_path: Path) -> None:
    """The facade's /v2 path reads its workers from the store (registration) and writes nothing: no row
    per request. A registration, which does write, shows the two measures see writes when there are some."""
    with (running_facade(tmp_path, "least-loaded") as facade,  # the strategy is not this test's question
          closing(sqlite3.connect(facade.backend.settings.database_path)) as other):
        assert facade.client.post(INFER, content=b"{}").status_code == 200  # the workers are read: warm

        changes, version = _total_changes(facade.backend), _data_version(other)
        answers = [facade.client.post(INFER, content=b"{}") for _ in range(20)]
        assert [r.status_code for r in answers] == [200] * 20
        assert _total_changes(facade.backend) == changes, "a /v2 request wrote to the database"
        assert _data_version(other) == version, "a /v2 request wrote to the database file"

        register(facade.client, "c", facade.workers[0].url)
        assert _total_changes(facade.backend) > changes, "a write is seen (the measure works)"
        assert _data_version(other) != version, "a write is seen from another connection too"
