"""Which worker the facade's ``/v2`` requests go to, and what they cost the cluster's database.

A real facade (``create_app`` with its real :class:`LocalBackend` and SQLite store) on a real uvicorn
socket, with workers registered over HTTP as a worker process registers (join token, its serving
endpoints and loaded model in its stats). For where requests go, the workers are two stand-ins, each a
real uvicorn server on loopback that answers an inference with its own name and holds a request whose
body is ``hold`` until the test lets it go, so the test decides how many requests each one has
outstanding. For the database, the worker is a real one (the worker's REST and gRPC servers, onnxruntime,
the demo digits model) and the facade serves gRPC too.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from helpers import JOIN_TOKEN, TOKEN, facade_app, facade_client, raw_server, serve_in_thread, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from legacygpu.api.backends.local import LocalBackend
from legacygpu.core.scheduling import STRATEGIES
from legacygpu.worker.serving import ServingServer

INFER = "/v2/models/m/infer"


@dataclass
class Worker:
    """A stand-in worker's ``/v2`` infer endpoint: answers with its name; a ``hold`` request waits for release."""

    name: str
    held: int = 0
    """Requests it holds now."""
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    async def infer(self, request: Request) -> PlainTextResponse:
        if await request.body() == b"hold":
            self.held += 1
            while not self.release.is_set():
                await asyncio.sleep(0.01)
            self.held -= 1
        return PlainTextResponse(self.name)


@dataclass
class Facade:
    client: httpx.Client
    backend: LocalBackend
    workers: list[Worker]


@contextmanager
def running_facade(tmp_path: Path, strategy: str = "least-loaded",
                   grpc: bool = False) -> Iterator[tuple[httpx.Client, LocalBackend, str]]:
    """A facade on a real socket (and, with ``grpc``, gRPC on a port it binds itself), its cluster in ``tmp_path``;
    its client (with the user token), its backend and its gRPC address ("" without)."""
    app = facade_app(tmp_path / "data", grpc=grpc, scheduling_strategy=strategy,
                     heartbeat_timeout_seconds=3600)  # no heartbeats here
    with facade_client(app) as client:
        yield client, app.state.backend, f"127.0.0.1:{app.state.grpc_port}" if grpc else ""


def register(client: httpx.Client, name: str, url: str, *, grpc: str | None = None, model: str = "m") -> None:
    """Register a worker as a worker process does, with its serving endpoints and loaded model in its stats."""
    stats = {"serving": {"rest": url, "grpc": grpc}, "models_loaded": [model]}
    body = {"name": name, "host": "h", "pid": 1, "device": {"name": "d"}, "concurrency": 1, "stats": stats}
    response = client.post("/cluster/workers/register", json=body, headers={"Authorization": f"Bearer {JOIN_TOKEN}"})
    assert response.status_code == 201, response.text


@pytest.fixture(params=sorted(STRATEGIES))
def facade(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Facade]:
    """A facade whose cluster schedules tasks with each of the strategies in turn, and two stand-in workers."""
    workers = [Worker("a"), Worker("b")]
    with ExitStack() as stack:
        for worker in workers:
            worker.url = stack.enter_context(serve_in_thread(
                Starlette(routes=[Route(INFER, worker.infer, methods=["POST"])]), lifespan="off"))
            stack.callback(worker.release.set)  # nothing left hanging on the way out
        client, backend, _ = stack.enter_context(running_facade(tmp_path, request.param))
        for worker in workers:
            register(client, worker.name, worker.url)
        yield Facade(client, backend, workers)


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


def test_v2_inference_writes_nothing_to_the_database(tmp_path: Path, worker: ServingServer) -> None:
    """The facade's /v2 path, REST and gRPC, reads its workers from the store (registration) and writes nothing:
    no row per request. A registration, which does write, shows the two measures see writes when there are some."""
    with (running_facade(tmp_path, grpc=True) as (client, backend, grpc_address),
          closing(sqlite3.connect(backend.settings.database_path)) as other,
          closing(triton_grpc.InferenceServerClient(grpc_address)) as grpc_client):
        register(client, "w", worker.endpoints["rest"], grpc=worker.endpoints["grpc"], model="digits")
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200  # the worker is read: warm

        changes, version = _total_changes(backend), _data_version(other)
        for _ in range(10):
            assert client.post("/v2/models/digits/infer", json=body).status_code == 200
            assert grpc_client.infer("digits", [tensor], headers=auth).as_numpy("probabilities").shape == (1, 10)
        assert client.get("/v2/models/digits/ready").status_code == 200
        assert _total_changes(backend) == changes, "a /v2 request wrote to the database"
        assert _data_version(other) == version, "a /v2 request wrote to the database file"

        register(client, "c", worker.endpoints["rest"])
        assert _total_changes(backend) > changes, "a write is seen (the measure works)"
        assert _data_version(other) != version, "a write is seen from another connection too"


@contextmanager
def counting_proxy(target: str) -> Iterator[tuple[str, list[int]]]:
    """A TCP relay on loopback to ``target`` (``host:port``): its ``host:port``, and a count of the connections it
    took (each relayed whole, both ways, to a connection of its own to ``target``)."""
    host, port = target.rsplit(":", 1)

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def relay(client: socket.socket) -> None:  # raw_server closes the client's socket once both ways are done
        with socket.create_connection((host, int(port))) as upstream:
            back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            back.start()
            pump(client, upstream)
            back.join()

    url, accepted = raw_server(relay)
    yield url.removeprefix("http://"), accepted


def test_grpc_through_the_facade_keeps_one_connection_to_the_worker(tmp_path: Path, worker: ServingServer) -> None:
    """The facade's gRPC calls to a worker share one persistent channel: many calls, from clients that each
    connect anew, cross one connection to the worker."""
    tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    auth = {"authorization": f"Bearer {TOKEN}"}
    with (running_facade(tmp_path, grpc=True) as (client, _, grpc_address),
          counting_proxy(worker.endpoints["grpc"]) as (relay, connections)):
        register(client, "w", worker.endpoints["rest"], grpc=relay, model="digits")
        for _ in range(5):
            with closing(triton_grpc.InferenceServerClient(grpc_address)) as grpc_client:
                for _ in range(2):
                    answer = grpc_client.infer("digits", [tensor], headers=auth)
                    assert answer.as_numpy("probabilities").shape == (1, 10)
        assert connections[0] == 1
