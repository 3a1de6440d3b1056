"""``/v2`` through the facade of a real local cluster: a facade process and worker processes on loopback.

Triton's client (``tritonclient`` from PyPI) sends the requests with the
cluster's token; the expected answers come from the task path of the same
cluster. Proves forwarding, the protocol's errors through the facade,
batching under concurrent load (worker metrics: fewer executions than
inferences), a full queue (503 with Retry-After), a worker dying (the request
is retried on another one), and ``legacygpu infer``; the same over the
facade's gRPC port (``tritonclient.grpc``): same top-1, the protocol's
status codes, the token as metadata.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from helpers import ADMIN_TOKEN, JOIN_TOKEN, TOKEN, LocalCluster, image_tensor, serving_cluster, slow_model, wait_until
from serving_support import EXAMPLES, enable_batching
from tritonclient.utils import InferenceServerException

from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.modelinfo import card_from_onnx

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}
DIGITS = [EXAMPLES / f"digit-{d}.png" for d in (1, 4, 9)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("serving") / "data"
    shutil.copytree(demo_repository, data / "models")
    enable_batching(data / "models")
    with serving_cluster(data) as c:
        yield c


def _http(cluster: LocalCluster) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(cluster.url.removeprefix("http://"), network_timeout=120)


def test_tritonclient_through_the_facade_gets_the_task_paths_top1(cluster: LocalCluster) -> None:
    expected = []
    for path in DIGITS:
        task = cluster.submit(model="digits", inputs=[image_tensor(path)])
        done = cluster.wait_phase(task["id"], {"Succeeded", "Failed"})
        expected.append(done["result"]["top_k"][0]["index"])
    assert expected == [1, 4, 9]

    images = np.array([p.read_bytes() for p in DIGITS], dtype=object)
    tensor = triton_http.InferInput("input", [len(DIGITS)], "BYTES")
    tensor.set_data_from_numpy(images)
    client = _http(cluster)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits", headers=AUTH)
    result = client.infer("digits", [tensor], headers=AUTH)
    assert result.as_numpy("probabilities").argmax(axis=1).tolist() == expected

    grpc_client = triton_grpc.InferenceServerClient(cluster.serving("w2")["grpc"])
    grpc_tensor = triton_grpc.InferInput("input", [len(DIGITS)], "BYTES")
    grpc_tensor.set_data_from_numpy(images)
    assert grpc_client.infer("digits", [grpc_tensor]).as_numpy("label").tolist() == expected

    facade = _grpc(cluster)
    assert facade.is_server_live() and facade.is_server_ready()
    assert facade.is_model_ready("digits", headers=GRPC_AUTH)
    assert [i["name"] for i in facade.get_model_metadata("digits", headers=GRPC_AUTH, as_json=True)["inputs"]] == [
        "input"]
    result = facade.infer("digits", [grpc_tensor], headers=GRPC_AUTH)
    assert result.as_numpy("label").tolist() == expected
    assert result.as_numpy("probabilities").argmax(axis=1).tolist() == expected
    facade.close()


def _grpc(cluster: LocalCluster) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{cluster.grpc_port}")


def _grpc_error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def _fp32(name: str, shape: list[int]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    return tensor


def test_the_facades_grpc_passes_on_the_protocols_errors_and_needs_the_token(cluster: LocalCluster) -> None:
    facade = _grpc(cluster)
    wrong = _grpc_error(lambda: facade.infer("digits", [_fp32("input", [1, 65])], headers=GRPC_AUTH))
    assert wrong.status() == "StatusCode.INVALID_ARGUMENT"
    assert wrong.message() == "input 'input': shape [1, 65] does not match the model's [N, 64]"
    unknown = _grpc_error(lambda: facade.infer("nope", [_fp32("input", [1, 64])], headers=GRPC_AUTH))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    assert unknown.message() == "unknown model 'nope' (models in the repository: digits)"
    for headers in (None, {"authorization": "Bearer not-the-token"}, {"authorization": TOKEN}):
        refused = _grpc_error(lambda h=headers: facade.infer("digits", [_fp32("input", [1, 64])], headers=h))
        assert refused.status() == "StatusCode.UNAUTHENTICATED", headers
        assert "token" in refused.message()
    assert _grpc_error(lambda: facade.get_server_metadata()).status() == "StatusCode.UNAUTHENTICATED"
    assert facade.is_server_live()  # the health checks are open, as REST's /v2/health/* are
    assert facade.get_server_metadata(headers=GRPC_AUTH).name == "legacygpu"
    facade.close()
    metrics = cluster.http.get("/metrics").text
    assert 'legacygpu_serving_requests_total{code="INVALID_ARGUMENT",model="digits"}' in metrics


@pytest.mark.parametrize(
    ("model", "tensor", "status", "words"),
    [
        ("digits", {"name": "input", "shape": [1, 65], "datatype": "FP32", "data": [0.0] * 65}, 400,
         "input 'input': shape [1, 65] does not match the model's [N, 64]"),
        ("digits", {"name": "input", "shape": [1, 64], "datatype": "FP64", "data": [0.0] * 64}, 400,
         "input 'input': datatype FP64 does not match the model's FP32"),
        ("digits", {"name": "image", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}, 400,
         "model 'digits' has no input 'image' (its inputs: input)"),
        ("nope", {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}, 404,
         "unknown model 'nope' (models in the repository: digits)"),
    ],
)
def test_the_facade_passes_on_the_protocols_errors(cluster: LocalCluster, model: str, tensor: dict, status: int,
                                                   words: str) -> None:
    response = cluster.http.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})
    assert response.status_code == status
    assert response.json() == {"error": words}


def test_v2_needs_the_token_except_for_health(cluster: LocalCluster) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    assert httpx.post(f"{cluster.url}/v2/models/digits/infer", json=body).status_code == 401
    assert httpx.get(f"{cluster.url}/v2/health/ready").json() == {"ready": True}


def _requests(cluster: LocalCluster, route: str, code: str) -> float:
    labels = f'code="{code}",method="POST",route="{re.escape(route)}"'
    found = re.search(rf"^legacygpu_http_requests_total{{{labels}}} (\S+)$", cluster.http.get("/metrics").text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_v2_inference_skips_fastapis_routing_but_not_its_token_check_or_request_count(cluster: LocalCluster) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    plain, versioned = "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"
    before = {(r, c): _requests(cluster, r, c) for r in (plain, versioned) for c in ("200", "401", "403")}
    for token in (TOKEN, ADMIN_TOKEN):
        answer = httpx.post(f"{cluster.url}/v2/models/digits/infer", json=body,
                            headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["model_name"] == "digits"
        assert {o["name"] for o in answer.json()["outputs"]} >= {"label"}
    user = {"Authorization": f"Bearer {TOKEN}"}  # not AUTH: tritonclient adds to the dict it is given
    answer = httpx.post(f"{cluster.url}/v2/models/digits/versions/1/infer", json=body, headers=user, timeout=60)
    assert answer.status_code == 200
    missing = httpx.post(f"{cluster.url}/v2/models/digits/infer", json=body)
    assert missing.status_code == 401 and missing.json()["detail"].startswith("missing bearer token")
    wrong = httpx.post(f"{cluster.url}/v2/models/digits/infer", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid token"
    join = {"Authorization": f"Bearer {JOIN_TOKEN}"}
    joined = httpx.post(f"{cluster.url}/v2/models/digits/infer", json=body, headers=join)
    assert joined.status_code == 403
    assert joined.json() == httpx.get(f"{cluster.url}/v2", headers=join).json()  # as every route for users says
    after = {key: _requests(cluster, *key) for key in before}
    assert after[(plain, "200")] - before[(plain, "200")] == 2
    assert after[(versioned, "200")] - before[(versioned, "200")] == 1
    assert after[(plain, "401")] - before[(plain, "401")] == 2
    assert after[(plain, "403")] - before[(plain, "403")] == 1


def test_a_large_request_goes_through_the_facade_byte_for_byte(cluster: LocalCluster) -> None:
    """Several megabytes, which the facade sends on in parts as they arrive: the tensor's bytes come last,
    after a JSON header padded to 3 MB, so a part lost or out of order shows in the answer."""
    x = np.random.default_rng(3).random((1, 64), dtype=np.float32) * 16
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"padding": "x" * 3_000_000}}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    through = cluster.http.post("/v2/models/digits/infer", content=header + x.tobytes(), headers=headers, timeout=60)
    direct = httpx.post(cluster.serving("w1")["rest"] + "/v2/models/digits/infer", json={
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}, timeout=60)
    assert through.status_code == direct.status_code == 200
    assert through.json()["outputs"] == direct.json()["outputs"]


def _metric(text: str, name: str, model: str = "digits") -> float:
    found = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_concurrent_load_is_batched_on_the_workers(cluster: LocalCluster) -> None:
    rng = np.random.default_rng(5)
    xs = [rng.uniform(0, 16, (1, 64)).astype(np.float32) for _ in range(96)]

    def infer(x: np.ndarray) -> int:
        tensor = triton_http.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(x)
        client = _http(cluster)  # one connection per thread, as concurrent clients have
        try:
            return int(client.infer("digits", [tensor], headers=AUTH).as_numpy("label")[0])
        finally:
            client.close()

    with ThreadPoolExecutor(32) as pool:
        labels = list(pool.map(infer, xs))
    assert len(labels) == 96
    inferred = executed = 0.0
    for name in ("w1", "w2"):
        text = httpx.get(f"{cluster.serving(name)['rest']}/metrics").text
        inferred += _metric(text, "legacygpu_inference_count_total")
        executed += _metric(text, "legacygpu_inference_exec_count_total")
    assert inferred >= 96
    assert executed < inferred
    facade = cluster.http.get("/metrics").text
    assert _metric(facade, "legacygpu_serving_forward_duration_seconds_count") >= 96


def test_legacygpu_infer_prints_the_result_at_once(cluster: LocalCluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "legacygpu.cli", "infer", "--model", "digits", "--input", str(EXAMPLES / "digit-7.png")],
        env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "output probabilities FP32[1, 10]" in done.stdout
    assert "top classes: 7 (" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "legacygpu.cli", "infer", "--model", "nope", "--input", str(EXAMPLES / "digit-7.png")],
        env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert missing.returncode != 0 and "unknown model 'nope'" in missing.stderr


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "CLUSTER_DEPLOYMENT_GUIDE.md"


def test_the_guides_serving_examples_work_as_written(cluster: LocalCluster, tmp_path: Path) -> None:
    """The chapter's curl and tritonclient examples, run against this cluster (its port and token file)."""
    guide = GUIDE.read_text()
    chapter = guide[guide.index("### Real-time serving"):guide.index("### Serving over gRPC")]
    blocks = re.findall(r"```(bash|python|yaml)\n(.*?)```", chapter, re.DOTALL)
    assert [lang for lang, _ in blocks] == ["bash", "python", "yaml"]
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    outputs = []
    for lang, code in blocks[:2]:
        code = code.replace("~/.local/share/legacygpu/api-token", str(token_file))
        code = code.replace('Path.home() / ".local/share/legacygpu/api-token"', f'Path("{token_file}")')
        code = code.replace("127.0.0.1:8000", f"127.0.0.1:{cluster.port}")
        argv = ["bash", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              cwd=GUIDE.parents[1])
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    curl_comment = re.search(r"^# (\{.*\})$", blocks[0][1], re.MULTILINE)
    assert curl_comment is not None and outputs[0] == curl_comment.group(1)
    assert outputs[1] == "[7] 7"
    import yaml

    from legacygpu.core.modelcards import ModelCard

    card = ModelCard.model_validate({"name": "example", **yaml.safe_load(blocks[2][1])})
    assert card.max_batch_size == 32 and card.dynamic_batching is not None


def test_the_guides_grpc_and_repository_examples_work_as_written(cluster: LocalCluster, tmp_path: Path) -> None:
    """The gRPC client and the upload/load/index commands, run against this cluster (its ports, token, data)."""
    guide = GUIDE.read_text()
    chapter = guide[guide.index("### Serving over gRPC"):guide.index("### Watching it")]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", chapter, re.DOTALL)
    assert [lang for lang, _ in blocks] == ["python", "bash"]
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN)
    python = blocks[0][1].replace('Path.home() / ".local/share/legacygpu/api-token"', f'Path("{token_file}")')
    python = python.replace("127.0.0.1:8001", f"127.0.0.1:{cluster.grpc_port}")
    admin_file = tmp_path / "admin-token"
    admin_file.write_text(ADMIN_TOKEN)
    bash = blocks[1][1].replace("~/.local/share/legacygpu/api-token", str(token_file))
    bash = bash.replace("~/.local/share/legacygpu/admin-token", str(admin_file))
    bash = bash.replace("~/.local/share/legacygpu/models", str(cluster.data_dir / "models"))
    bash = bash.replace("127.0.0.1:8000", f"127.0.0.1:{cluster.port}")
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    outputs = []
    for argv in ([sys.executable, "-c", python], ["bash", "-c", bash]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env,
                              cwd=GUIDE.parents[1])
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip().splitlines())
    assert outputs[0] == ["[7]"]
    comments = re.findall(r"^# (.*)$", blocks[1][1], re.MULTILINE)
    assert outputs[1][0].startswith("uploaded model 'digits-copy' version 1 (")
    assert outputs[1][1:] == comments[1:]


def _kill_a_preferred_worker(cluster: LocalCluster, victim: str, other: str) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    for name in (victim, other):  # both load digits, so both are preferred and concurrent requests go to both
        assert httpx.post(f"{cluster.serving(name)['rest']}/v2/models/digits/infer", json=body).status_code == 200
        wait_until(lambda n=name: "digits" in cluster.worker(n)["stats"]["models_loaded"], timeout=60)
    # The facade reads the worker list at most once a second: let it see both workers with digits
    # loaded, else it prefers the survivor alone and never tries the dead one (the retry under test).
    time.sleep(1.5)
    cluster.workers[victim].send_signal(signal.SIGKILL)
    cluster.workers[victim].wait()


def test_a_worker_that_dies_is_replaced_by_another_for_the_same_request(cluster: LocalCluster) -> None:
    """Runs last in this module: it kills a worker (REST), then a third one it starts (gRPC)."""
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    _kill_a_preferred_worker(cluster, "w1", "w2")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: cluster.http.post("/v2/models/digits/infer", json=body), range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    retried = _metric(cluster.http.get("/metrics").text, "legacygpu_serving_retries_total")
    assert retried >= 1

    # The facade must no longer list the dead w1 (lost after the heartbeat timeout): with it, a request's
    # two tries could both land on dead workers, and once is all the retry there is.
    wait_until(lambda: cluster.worker("w1") is None, timeout=60, what="w1 to be seen lost")
    cluster.start_worker("w3")
    cluster.serving("w3")
    _kill_a_preferred_worker(cluster, "w3", "w2")
    facade = _grpc(cluster)
    with ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(lambda _: facade.infer("digits", [_fp32("input", [1, 64])], headers=GRPC_AUTH)
                               .as_numpy("label").tolist(), range(8)))
    facade.close()
    assert len(labels) == 8
    assert _metric(cluster.http.get("/metrics").text, "legacygpu_serving_retries_total") > retried


def test_a_full_queue_is_503_with_retry_after(data_dir: Path, tmp_path: Path) -> None:
    path = slow_model(tmp_path / "slow.onnx", layers=12)
    ModelRepository(data_dir / "models").add(card_from_onnx("slow", path), path)
    enable_batching(data_dir / "models", "slow", max_batch_size=1, delay_us=0,
                    default_queue_policy={"max_queue_size": 1})
    cluster = LocalCluster(data_dir)
    try:
        cluster.start_api()
        cluster.start_worker("w1")
        cluster.serving("w1")
        body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [0.5] * 1024}]}
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: cluster.http.post("/v2/models/slow/infer", json=body), range(4)))
    finally:
        cluster.stop()
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and 503 in codes, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    assert "the queue is full" in refused.json()["error"]
