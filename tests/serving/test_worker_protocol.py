"""A worker's Open Inference Protocol endpoints, spoken to by Triton's own client (REST and gRPC).

The server runs in this process on loopback over the real onnxruntime backend
and the demo digits model; the clients are ``tritonclient`` from PyPI. The
expected answers come from the task path (:meth:`TaskRunner.run`) on the
same images.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from serving_support import EXAMPLES
from tritonclient.utils import InferenceServerException

from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingServer

DIGITS = [EXAMPLES / f"digit-{d}.png" for d in (0, 3, 7)]


def _http(server: ServingServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.endpoints["rest"].removeprefix("http://"))


def _task_top1(runner: TaskRunner, path) -> int:  # type: ignore[no-untyped-def]
    image = {"name": "input", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(path.read_bytes()).decode()]}
    return int(runner.run("digits", [image])["top_k"][0]["index"])


def test_health_and_metadata_over_both_protocols(worker_server: ServingServer) -> None:
    client = _http(worker_server)
    assert client.is_server_live() and client.is_server_ready()
    assert not client.is_model_ready("digits")  # ready means loaded, and nothing has loaded it yet
    client.load_model("digits")  # Triton's repository extension
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("no-such-model")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]

    grpc_client = triton_grpc.InferenceServerClient(worker_server.endpoints["grpc"])
    assert grpc_client.is_server_live() and grpc_client.is_model_ready("digits")
    assert grpc_client.get_model_metadata("digits").inputs[0].shape == [-1, 64]


def test_unload_makes_a_model_unready_and_refuses_it_until_loaded(worker_server: ServingServer) -> None:
    client = _http(worker_server)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    infer = f"{worker_server.endpoints['rest']}/v2/models/digits/infer"
    assert httpx.post(infer, json=body).status_code == 200  # loads it on demand
    assert client.get_model_repository_index() == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""}]
    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    refused = httpx.post(infer, json=body)
    assert refused.status_code == 503
    assert refused.json() == {
        "error": "model 'digits' is unloaded; load it with POST /v2/repository/models/digits/load"}
    assert client.get_model_repository_index()[0]["reason"] == "unloaded"
    client.load_model("digits")
    assert client.is_model_ready("digits") and httpx.post(infer, json=body).status_code == 200
    missing = httpx.post(f"{worker_server.endpoints['rest']}/v2/repository/models/nope/load")
    assert missing.status_code == 404 and "unknown model 'nope'" in missing.json()["error"]


def test_images_get_the_task_paths_top1_over_rest_and_grpc(worker_server: ServingServer, runner: TaskRunner) -> None:
    images = np.array([p.read_bytes() for p in DIGITS], dtype=object)
    expected = [_task_top1(runner, p) for p in DIGITS]
    assert expected == [0, 3, 7]

    http_input = triton_http.InferInput("input", [len(DIGITS)], "BYTES")
    http_input.set_data_from_numpy(images)  # binary tensor data extension
    result = _http(worker_server).infer("digits", [http_input])
    assert result.as_numpy("probabilities").argmax(axis=1).tolist() == expected
    assert result.as_numpy("label").tolist() == expected

    grpc_input = triton_grpc.InferInput("input", [len(DIGITS)], "BYTES")
    grpc_input.set_data_from_numpy(images)
    grpc_client = triton_grpc.InferenceServerClient(worker_server.endpoints["grpc"])
    outputs = [triton_grpc.InferRequestedOutput("probabilities")]
    result = grpc_client.infer("digits", [grpc_input], outputs=outputs)
    assert result.as_numpy("probabilities").argmax(axis=1).tolist() == expected
    assert result.as_numpy("label") is None  # only what was asked for


def test_json_and_binary_tensors_give_the_backends_numbers(worker_server: ServingServer, runner: TaskRunner) -> None:
    x = np.random.default_rng(1).uniform(0, 16, (4, 64)).astype(np.float32)
    direct = runner.run_feeds("digits", {"input": x})["probabilities"]
    for binary in (True, False):
        tensor = triton_http.InferInput("input", [4, 64], "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
        result = _http(worker_server).infer("digits", [tensor], outputs=[out])
        np.testing.assert_allclose(result.as_numpy("probabilities"), direct, rtol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "status", "words"),
    [
        ([{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}], 400,
         "input 'input': shape [1, 63] does not match the model's [N, 64]"),
        ([{"name": "input", "shape": [1, 64], "datatype": "INT32", "data": [0] * 64}], 400,
         "input 'input': datatype INT32 does not match the model's FP32"),
        ([{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}], 400,
         "model 'digits' has no input 'pixels' (its inputs: input)"),
    ],
)
def test_rest_errors_name_the_tensor(worker_server: ServingServer, inputs: list, status: int, words: str) -> None:
    response = httpx.post(f"{worker_server.endpoints['rest']}/v2/models/digits/infer", json={"inputs": inputs})
    assert response.status_code == status
    assert response.json() == {"error": words}


def test_a_bad_header_length_is_400_and_another_method_on_infer_is_404(worker_server: ServingServer) -> None:
    url = f"{worker_server.endpoints['rest']}/v2/models/digits/infer"
    response = httpx.post(url, content=b"{}", headers={"Inference-Header-Content-Length": "two"})
    assert response.status_code == 400
    assert response.json() == {"error": "Inference-Header-Content-Length must be an integer, not 'two'"}
    response = httpx.get(url)
    assert response.status_code == 404 and response.json() == {"error": "no endpoint GET /v2/models/digits/infer"}


def test_unknown_model_and_version_are_404(worker_server: ServingServer) -> None:
    base = worker_server.endpoints["rest"]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    response = httpx.post(f"{base}/v2/models/nope/infer", json=body)
    assert response.status_code == 404 and "unknown model 'nope'" in response.json()["error"]
    response = httpx.post(f"{base}/v2/models/digits/versions/2/infer", json=body)
    assert response.status_code == 404 and "no version '2'" in response.json()["error"]
    assert httpx.post(f"{base}/v2/models/digits/versions/1/infer", json=body).status_code == 200


def test_grpc_errors_carry_status_codes(worker_server: ServingServer) -> None:
    client = triton_grpc.InferenceServerClient(worker_server.endpoints["grpc"])
    wrong = triton_grpc.InferInput("input", [1, 63], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException) as bad:
        client.infer("digits", [wrong])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'input': shape [1, 63]" in bad.value.message()
    right = triton_grpc.InferInput("input", [1, 64], "FP32")
    right.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nope", [right])
    assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_an_unloaded_model_is_unavailable_over_grpc(worker_server: ServingServer) -> None:
    client = triton_grpc.InferenceServerClient(worker_server.endpoints["grpc"])
    tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    repository = _http(worker_server)  # the repository extension is REST's
    repository.load_model("digits")
    repository.unload_model("digits")
    with pytest.raises(InferenceServerException) as refused:
        client.infer("digits", [tensor])
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert refused.value.message() == (
        "model 'digits' is unloaded; load it with POST /v2/repository/models/digits/load")
    repository.load_model("digits")
    assert client.infer("digits", [tensor]).as_numpy("label").shape == (1,)


def test_metrics_count_requests_by_model(worker_server: ServingServer) -> None:
    base = worker_server.endpoints["rest"]
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.0] * 128}]}
    assert httpx.post(f"{base}/v2/models/digits/infer", json=body).status_code == 200
    body["inputs"][0]["shape"] = [4, 32]  # consistent, but not what the card says
    assert httpx.post(f"{base}/v2/models/digits/infer", json=body).status_code == 400
    text = httpx.get(f"{base}/metrics").text
    assert 'legacygpu_inference_request_success_total{model="digits"} 1.0' in text
    assert 'legacygpu_inference_request_failure_total{model="digits",reason="bad_request"} 1.0' in text
    assert 'legacygpu_inference_count_total{model="digits"} 2.0' in text
    assert 'legacygpu_inference_compute_infer_duration_seconds_count{model="digits"} 1.0' in text


def test_queue_and_compute_histograms_observe_each_answered_request_by_model(worker_server: ServingServer) -> None:
    """Queue time and compute input / infer / output time: one observation per request answered, none for a
    request refused."""
    base = worker_server.endpoints["rest"]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    for _ in range(3):
        assert httpx.post(f"{base}/v2/models/digits/infer", json=body).status_code == 200
    body["inputs"][0]["shape"] = [2, 32]
    assert httpx.post(f"{base}/v2/models/digits/infer", json=body).status_code == 400
    text = httpx.get(f"{base}/metrics").text
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        name = f"legacygpu_inference_{stage}_duration_seconds"
        assert f'{name}_count{{model="digits"}} 3.0' in text, name
        assert f'{name}_bucket{{le="+Inf",model="digits"}} 3.0' in text, name


def test_a_worker_whose_serving_port_is_taken_keeps_its_task_loop(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from legacygpu.cli.worker import _start_serving

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = {"host": "127.0.0.1", "http_port": port, "grpc_port": 0, "advertise_host": None}
        assert _start_serving(lambda: None, options) is None
    assert "no real-time serving on this worker" in caplog.text
