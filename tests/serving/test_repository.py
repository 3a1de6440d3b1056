"""The facade's model repository extension on a real local cluster: upload, index, load, unload, versions.

A facade process and two worker processes on loopback. Models are uploaded
with ``legacygpu model add --api`` (the CLI as a user runs it) and inspected
with Triton's own client (``tritonclient.http``: ``get_model_repository_index``,
``load_model``, ``unload_model``, ``is_model_ready``). The models are two
versions of a one-node ONNX graph (``y = k * x``, k = 2 then 3), so every
answer says which version computed it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from helpers import ADMIN_TOKEN, TOKEN, LocalCluster, serving_cluster, wait_until
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
X = [[1.0, 2.0, 3.0, 4.0]]


def scale_model(path: Path, k: float) -> Path:
    """``y = k * x`` for x of shape [N, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [k])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("repository") / "data"
    data.mkdir(parents=True)
    with serving_cluster(data) as c:
        wait_until(lambda: c.http.get("/v2/health/ready").status_code == 200, timeout=30, what="/v2 ready")
        yield c


def _cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legacygpu.cli", *args], env={**os.environ, **cluster.env},
                          capture_output=True, text=True, timeout=120, check=False)


def _client(cluster: LocalCluster) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(cluster.url.removeprefix("http://"), network_timeout=120)


def _infer(cluster: LocalCluster, version: str = "") -> httpx.Response:
    path = f"/v2/models/scale{f'/versions/{version}' if version else ''}/infer"
    return cluster.http.post(path, json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                     "data": X[0]}]})


def _y(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]


def _index(cluster: LocalCluster) -> dict[tuple[str, str], str]:
    return {(e["name"], e["version"]): e["state"] for e in _client(cluster).get_model_repository_index(headers=AUTH)}


def test_upload_with_the_cli_then_load_makes_it_ready_and_unload_not(cluster: LocalCluster, tmp_path: Path) -> None:
    added = _cli(cluster, "model", "add", "scale", str(scale_model(tmp_path / "v1.onnx", 2.0)), "--api", cluster.url)
    assert added.returncode == 0, added.stderr
    assert "uploaded model 'scale' version 1" in added.stdout
    client = _client(cluster)
    assert _index(cluster)[("scale", "1")] == "UNAVAILABLE"
    assert not client.is_model_ready("scale", headers=AUTH)
    assert _infer(cluster).status_code == 404  # uploaded, not live: nothing runs it yet

    denied = cluster.http.post("/v2/repository/models/scale/load")
    assert denied.status_code == 403 and "admin" in denied.text  # changing the repository takes the admin token
    client.load_model("scale", headers=ADMIN)
    assert client.is_model_ready("scale", headers=AUTH)
    assert triton_grpc.InferenceServerClient(f"127.0.0.1:{cluster.grpc_port}").is_model_ready(
        "scale", headers={"authorization": f"Bearer {TOKEN}"})
    assert _index(cluster)[("scale", "1")] == "READY"
    assert _y(_infer(cluster)) == [2.0, 4.0, 6.0, 8.0]

    client.unload_model("scale", headers=ADMIN)
    assert not client.is_model_ready("scale", headers=AUTH)
    assert _index(cluster)[("scale", "1")] == "UNAVAILABLE"
    refused = _infer(cluster)
    assert refused.status_code == 503 and "is unloaded" in refused.json()["error"]
    client.load_model("scale", headers=ADMIN)
    assert _y(_infer(cluster)) == [2.0, 4.0, 6.0, 8.0]


def test_a_bad_sha256_is_refused_naming_it(cluster: LocalCluster, tmp_path: Path) -> None:
    data = scale_model(tmp_path / "bad.onnx", 5.0).read_bytes()
    wrong = hashlib.sha256(b"something else").hexdigest()
    response = cluster.admin.post("/v2/repository/models/other/versions",
                                 data={"sha256": wrong, "card": "inputs: []\n"},
                                 files={"model": ("model.onnx", data, "application/octet-stream")})
    assert response.status_code == 400
    error = response.json()["error"]
    assert f"sha256 mismatch for 'model.onnx': the request says {wrong}" in error
    assert hashlib.sha256(data).hexdigest() in error
    assert not any(name == "other" for name, _ in _index(cluster))
    missing = cluster.admin.post("/v2/repository/models/other/versions", data={"card": "inputs: []\n"},
                                files={"model": ("model.onnx", data, "application/octet-stream")})
    assert missing.status_code == 400 and "sha256" in missing.json()["error"]
    assert httpx.post(f"{cluster.url}/v2/repository/index").status_code == 401  # the token is needed


def test_uploading_version_2_keeps_version_1_servable(cluster: LocalCluster, tmp_path: Path) -> None:
    if not _client(cluster).is_model_ready("scale", headers=AUTH):  # run alone: the first test's upload
        test_upload_with_the_cli_then_load_makes_it_ready_and_unload_not(cluster, tmp_path)
    added = _cli(cluster, "model", "add", "scale", str(scale_model(tmp_path / "v2.onnx", 3.0)), "--api", cluster.url)
    assert added.returncode == 0, added.stderr
    assert "version 2" in added.stdout
    assert _y(_infer(cluster)) == [2.0, 4.0, 6.0, 8.0]  # still version 1
    assert _y(_infer(cluster, "1")) == [2.0, 4.0, 6.0, 8.0]
    not_loaded = _infer(cluster, "2")
    assert not_loaded.status_code == 404 and "version '2' is stored but not loaded" in not_loaded.json()["error"]
    assert _index(cluster)[("scale", "1")] == "READY" and _index(cluster)[("scale", "2")] == "UNAVAILABLE"

    _client(cluster).load_model("scale", headers=ADMIN)  # the newest version
    assert _y(_infer(cluster)) == [3.0, 6.0, 9.0, 12.0]
    assert _y(_infer(cluster, "2")) == [3.0, 6.0, 9.0, 12.0]
    assert _index(cluster)[("scale", "2")] == "READY" and _index(cluster)[("scale", "1")] == "UNAVAILABLE"
    assert cluster.http.get("/v2/models/scale").json()["versions"] == ["2"]

    back = cluster.admin.post("/v2/repository/models/scale/load", json={"parameters": {"version": "1"}})
    assert back.status_code == 200, back.text
    assert _y(_infer(cluster)) == [2.0, 4.0, 6.0, 8.0]  # version 1 was kept, byte for byte
    unknown = cluster.admin.post("/v2/repository/models/scale/load", json={"parameters": {"version": "7"}})
    assert unknown.status_code == 404 and "has no version '7'" in unknown.json()["error"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        _client(cluster).load_model("nope", headers=ADMIN)
    assert np.allclose(_y(_infer(cluster, "1")), [2.0, 4.0, 6.0, 8.0])
