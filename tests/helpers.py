"""Helpers shared by every test tier: free ports, polling, the slow model, a real local cluster.

:class:`LocalCluster` runs a real facade and real worker processes on
loopback, the way ``legacygpu cluster start`` does, with short heartbeat and
retry timings so fault tests are quick.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "examples" / "digits"
TOKEN = "test-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"
JOIN_TOKEN = "test-join-token-0123456789"

FAST_TIMINGS = {
    "LEGACYGPU_HEARTBEAT_INTERVAL_SECONDS": "0.3",
    "LEGACYGPU_HEARTBEAT_TIMEOUT_SECONDS": "2.0",
    "LEGACYGPU_RETRY_BASE_SECONDS": "0.2",
    "LEGACYGPU_RETRY_CAP_SECONDS": "1.0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



@contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """``app`` (ASGI) served by a real uvicorn on a free loopback port, in a thread; yields its URL.

    ``config`` goes to ``uvicorn.Config`` (``log_level`` is critical unless given)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "critical", **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)



class FixedWorkers:
    """Discovery stand-in for a ``Forwarder``: the workers serving are ``endpoints``, a list the test may change."""

    def __init__(self, *endpoints: Any) -> None:
        self.endpoints = list(endpoints)

    async def serving_endpoints(self) -> list[Any]:
        return list(self.endpoints)


def endpoint(name: str, url: str, models: tuple[str, ...] = ("m",), grpc: str | None = None) -> Any:
    """A worker's :class:`~legacygpu.api.discovery.ServingEndpoint`: REST at ``url``, ``models`` loaded."""
    from legacygpu.api.discovery import ServingEndpoint

    return ServingEndpoint(name, url, frozenset(models), grpc)


def served_by(name: str, server: Any, models: tuple[str, ...]) -> Any:
    """The :func:`endpoint` of a worker server in this process (a started
    :class:`~legacygpu.worker.serving.ServingServer`): its REST and gRPC addresses, ``models`` loaded."""
    return endpoint(name, server.endpoints["rest"], models, server.endpoints["grpc"])


def facade_app(data_dir: Path, *, grpc: bool = False, **settings: Any) -> Any:
    """The facade's app (``create_app``) over ``data_dir`` with the tests' tokens and ``settings``; with ``grpc``,
    its gRPC on a port it binds itself (``app.state.grpc_port`` once served)."""
    from legacygpu.api import create_app
    from legacygpu.core.config import Settings

    return create_app(Settings(data_dir=data_dir, api_token=TOKEN, join_token=JOIN_TOKEN, **settings),
                      grpc_address="127.0.0.1:0" if grpc else None)


@contextmanager
def facade_client(app: Any, token: str | None = TOKEN) -> Iterator[httpx.Client]:
    """``app`` served on loopback (:func:`serve_in_thread`): a client to it, sending ``token`` unless None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        yield client


def raw_server(handle: Callable[[socket.socket], None]) -> tuple[str, list[int]]:
    """A loopback socket that speaks no protocol of its own: every connection goes to ``handle`` (in a
    thread, closed after it); its URL and a count of the connections it accepted. For servers that misbehave
    on purpose (an answer cut short, a peer that never reads)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = [0]

    def handled(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            handle(conn)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted[0] += 1
            threading.Thread(target=handled, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", accepted


def read_http_request(conn: socket.socket) -> bytes:
    """Read one whole HTTP request off ``conn`` (its head and a Content-Length body); its head.

    A peer that closes first raises ConnectionError (an OSError: :func:`raw_server` then closes the connection).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = lengths[0] if lengths else 0
    while len(body) < length:
        body += _received(conn)
    return head


def _received(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise ConnectionError("the client closed the connection before its request was whole")
    return chunk


def half_answer_server() -> tuple[str, list[int]]:
    """A worker that dies while it answers: to each request, headers promising 100 bytes, 10 of them, then
    the connection closed. Its URL, and a count of the connections it took (as :func:`raw_server`)."""

    def half_answer(conn: socket.socket) -> None:
        read_http_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
                     b'{"model_na')

    return raw_server(half_answer)


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def slow_model(path: Path, layers: int = 200, rows: int = 1024, width: int = 1024) -> Path:
    """An ONNX model that takes a few seconds per run: ``layers`` big MatMuls on a broadcast input.

    Input ``x`` FP32 [1, width]; output ``y`` FP32 [1]. Used where a test needs
    a task to be running long enough to kill its worker.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([rows, width], dtype=np.int64), "shape")
    nodes = [helper.make_node("Expand", ["x", "shape"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{layers}"], ["m"], keepdims=0))
    nodes.append(helper.make_node("Reshape", ["m", "one"], ["y"]))
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[weight, shape, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class LocalCluster:
    """A real facade process plus real worker processes, on a free loopback port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **FAST_TIMINGS,
            "LEGACYGPU_DATA_DIR": str(data_dir),
            "LEGACYGPU_API_TOKEN": TOKEN,
            "LEGACYGPU_ADMIN_TOKEN": ADMIN_TOKEN,
            "LEGACYGPU_JOIN_TOKEN": JOIN_TOKEN,
            "LEGACYGPU_API_URL": self.url,
            "LEGACYGPU_API_GRPC_PORT": str(self.grpc_port),  # not 8001, which another cluster may hold
            **(env or {}),
        }
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        self.join = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {JOIN_TOKEN}"}, timeout=30)
        self.logs = data_dir / "test-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        return subprocess.Popen([sys.executable, "-m", "legacygpu.cli", *args], env=self.env, stdout=log, stderr=log)

    def start_api(self, log_level: str = "warning") -> None:
        self.api = self._spawn("api", "api", "serve", "--port", str(self.port), "--log-level", log_level)

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/cluster/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, what="the facade to answer")

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.send_signal(signal.SIGKILL)
        self.api.wait()

    def start_worker(self, name: str, backend: str = "onnxruntime") -> None:
        self.workers[name] = self._spawn(name, "worker", "start", "--backend", backend, "--name", name)
        wait_until(lambda: self.worker(name), timeout=60, what=f"worker {name} to register")

    def worker(self, name: str) -> dict[str, Any] | None:
        workers = self.http.get("/cluster/workers").json()["data"]
        live = [w for w in workers if w["name"] == name and w["state"] == "active"]
        return live[-1] if live else None

    def serving(self, name: str) -> dict[str, str]:
        """Worker ``name``'s Open Inference Protocol endpoints (``rest``, ``grpc``), once it has announced them."""
        return wait_until(lambda: (self.worker(name) or {}).get("stats", {}).get("serving"), timeout=60,
                          what=f"worker {name} to announce its endpoints")

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/cluster/tasks/submit", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def task(self, task_id: str) -> dict[str, Any]:
        return self.http.get(f"/cluster/tasks/{task_id}").json()

    def wait_phase(self, task_id: str, phases: set[str], timeout: float = 60) -> dict[str, Any]:
        return wait_until(lambda: (t := self.task(task_id))["phase"] in phases and t, timeout=timeout,
                          what=f"task {task_id} to reach {phases}")

    def stop(self) -> None:
        for process in [*self.workers.values(), self.api]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers.values(), self.api]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        for client in (self.http, self.admin, self.join):
            client.close()


@contextmanager
def cluster_with_worker(data_dir: Path, models: Path, worker: str) -> Iterator[LocalCluster]:
    """A facade plus one worker process named ``worker``, serving a copy of the repository ``models``."""
    shutil.copytree(models, data_dir / "models")
    cluster = LocalCluster(data_dir)
    try:
        cluster.start_api()
        cluster.start_worker(worker)
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def serving_cluster(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A facade plus two worker processes, ``w1`` and ``w2``, each once it has announced its serving endpoints."""
    cluster = LocalCluster(data_dir, env)
    try:
        cluster.start_api()
        for name in ("w1", "w2"):
            cluster.start_worker(name)
            cluster.serving(name)
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def serving_server(runner: Any) -> Iterator[Any]:
    """A worker's REST and gRPC endpoints on loopback, in this process, over ``runner`` (a
    :class:`~legacygpu.worker.runner.TaskRunner`): a started :class:`~legacygpu.worker.serving.ServingServer`."""
    from legacygpu.worker.serving import ServingEngine, ServingServer

    server = ServingServer(ServingEngine(runner, server_version="test"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def image_tensor(path: Path, name: str = "input") -> dict[str, Any]:
    import base64

    return {"name": name, "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(path.read_bytes()).decode()]}
