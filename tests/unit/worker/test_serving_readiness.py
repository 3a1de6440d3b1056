"""A pod's ``/v2/health/ready`` can wait for more than the models (the task watch), without refusing inference.

Real: the worker's REST server on loopback, the onnxruntime backend, the demo digits model.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.backends import create_backend
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine, ServingServer


def test_readiness_waits_for_the_extra_condition_and_inference_does_not(demo_repository: Path) -> None:
    watching = threading.Event()
    runner = TaskRunner(ModelRepository(demo_repository), create_backend("onnxruntime"))
    server = ServingServer(ServingEngine(runner, server_version="test", readiness=watching.is_set))
    server.start()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    try:
        with httpx.Client(base_url=server.endpoints["rest"], timeout=30) as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 503
            assert client.post("/v2/models/digits/infer", json=body).status_code == 200
            watching.set()
            assert client.get("/v2/health/ready").json() == {"ready": True}
            watching.clear()  # the pod is stopping: unready, still answering what reaches it
            assert client.get("/v2/health/ready").status_code == 503
            assert client.post("/v2/models/digits/infer", json=body).status_code == 200
    finally:
        server.stop()


def test_stopping_with_a_drain_answers_requests_sent_during_it_then_closes(demo_repository: Path) -> None:
    """A pod on SIGTERM: requests that reach it in the drain are answered (none refused), then the port closes."""
    runner = TaskRunner(ModelRepository(demo_repository), create_backend("onnxruntime"))
    server = ServingServer(ServingEngine(runner, server_version="test"), grpc_port=None)
    server.start()
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    stopping = threading.Thread(target=server.stop, kwargs={"drain_seconds": 1.5})
    statuses: list[int] = []
    with httpx.Client(base_url=server.endpoints["rest"], timeout=30) as client:
        stopping.start()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # within the drain
            statuses.append(client.post("/v2/models/digits/infer", json=body).status_code)
        stopping.join(timeout=30)
        assert not stopping.is_alive()
        with pytest.raises(httpx.TransportError):
            client.post("/v2/models/digits/infer", json=body)
    assert statuses and set(statuses) == {200}


def test_an_idle_server_ends_its_drain_early(demo_repository: Path) -> None:
    """No request comes: the drain ends after a quiet second, not after the whole ``drain_seconds``."""
    runner = TaskRunner(ModelRepository(demo_repository), create_backend("onnxruntime"))
    server = ServingServer(ServingEngine(runner, server_version="test"), grpc_port=None)
    server.start()
    stopping = threading.Thread(target=server.stop, kwargs={"drain_seconds": 60})
    stopping.start()
    stopping.join(timeout=20)
    assert not stopping.is_alive()
