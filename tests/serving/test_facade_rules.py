"""The facade's ``/v2`` rules, on a real facade and real workers in this process.

The facade is ``create_app`` on loopback (REST on uvicorn, gRPC on its own
port) with discovery stood in by a fixed list of endpoints
(:func:`serving_support.facade`); the live workers are real worker servers
(:class:`~legacygpu.worker.serving.ServingServer`, onnxruntime), the dead
ones addresses where nothing listens. What is checked: a request missing one
of a model's inputs is refused naming it, and a request is sent to a second
worker when its first fails, but never to a third.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from helpers import TOKEN, endpoint, free_port, served_by, serving_server
from serving_support import facade
from tritonclient.utils import InferenceServerException

from legacygpu.api.discovery import ServingEndpoint
from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.backends import create_backend
from legacygpu.worker.modelinfo import card_from_onnx
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine, ServingServer

GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def pair_worker(tmp_path: Path) -> Iterator[ServingServer]:
    """A worker serving ``pair``: two inputs, ``a`` and ``b`` (FP32 [N, 2]), and their sum ``y``."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    path = tmp_path / "pair.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    repository = ModelRepository(tmp_path / "models")
    repository.add(card_from_onnx("pair", path), path)
    with serving_server(TaskRunner(repository, create_backend("onnxruntime"))) as server:
        yield server


def _tensor(name: str, values: list[float]) -> dict[str, object]:
    return {"name": name, "shape": [1, 2], "datatype": "FP32", "data": values}


def test_a_request_missing_one_of_two_inputs_is_refused_through_the_facade_naming_it(
        pair_worker: ServingServer, tmp_path: Path) -> None:
    with facade(tmp_path / "data", served_by("w", pair_worker, ("pair",))) as front:
        both = front.http.post("/v2/models/pair/infer", json={"inputs": [_tensor("a", [1, 2]), _tensor("b", [3, 4])]})
        assert both.status_code == 200, both.text
        assert both.json()["outputs"][0]["data"] == [4, 6]
        for present, missing in (("a", "b"), ("b", "a")):
            refused = front.http.post("/v2/models/pair/infer", json={"inputs": [_tensor(present, [1, 2])]})
            assert refused.status_code == 400
            assert refused.json() == {"error": f"model 'pair' needs input '{missing}'"}
        client = triton_grpc.InferenceServerClient(front.grpc)
        only_a = triton_grpc.InferInput("a", [1, 2], "FP32")
        only_a.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(InferenceServerException) as over_grpc:
            client.infer("pair", [only_a], headers=GRPC_AUTH)
        client.close()
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert over_grpc.value.message() == "model 'pair' needs input 'b'"


def _dead(name: str) -> ServingEndpoint:
    return endpoint(name, f"http://127.0.0.1:{free_port()}", ("digits",), f"127.0.0.1:{free_port()}")


def _answered(engine: ServingEngine) -> float:
    return engine.metrics.registry.get_sample_value("legacygpu_inference_request_success_total",
                                                    {"model": "digits"}) or 0.0


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_request_is_retried_once_so_two_dead_workers_fail_it_though_a_third_lives(
        worker_server: ServingServer, tmp_path: Path, protocol: str) -> None:
    """forwarding.py: a worker that fails mid-request is skipped and the request "sent once more to another
    worker"; then "with no worker left the answer is 503 with Retry-After". The live worker looks busier (one
    request outstanding) so both tries go to the dead ones: it gets nothing. The failed workers are then passed
    over until the worker list is read again, so the next request goes to the live one."""
    live, dead = served_by("live", worker_server, ("digits",)), [_dead("dead-1"), _dead("dead-2")]
    with facade(tmp_path / "data", dead[0], live, dead[1]) as front:
        front.forwarder.outstanding[live.url] = 1

        def infer() -> tuple[str, str, str | None]:
            """The answer's status, its error message (or ""), its retry-after."""
            if protocol == "rest":
                body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
                answer = front.http.post("/v2/models/digits/infer", json=body)
                error = answer.json().get("error", "")
                return str(answer.status_code), error, answer.headers.get("retry-after")
            client = triton_grpc.InferenceServerClient(front.grpc)
            tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
            try:
                client.infer("digits", [tensor], headers=GRPC_AUTH)
                return "StatusCode.OK", "", None
            except InferenceServerException as exc:
                return str(exc.status()), str(exc.message()), None
            finally:
                client.close()

        status, error, retry_after = infer()
        assert _answered(worker_server.engine) == 0  # the live worker got nothing
        assert status == ("503" if protocol == "rest" else "StatusCode.UNAVAILABLE")
        failed = "no worker serves the Open Inference Protocol now (the last one failed: "
        assert any(error.startswith(f"{failed}{d.name}: ") for d in dead), error  # named so over REST and gRPC
        assert retry_after == ("1" if protocol == "rest" else None)
        assert front.metrics.get_sample_value("legacygpu_serving_retries_total", {"model": "digits"}) == 1

        status, error, _ = infer()
        assert (status, error) == ("200" if protocol == "rest" else "StatusCode.OK", "")
        assert _answered(worker_server.engine) == 1
        assert front.metrics.get_sample_value("legacygpu_serving_retries_total", {"model": "digits"}) == 1
