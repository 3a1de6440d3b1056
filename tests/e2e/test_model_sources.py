"""Models by ``storageUri`` on the real control plane: over http, from a ConfigMap and a claim, checked by sha256.

Real: the API server (the CRD's schema and CEL rules, RBAC), scheduler, PV controller and garbage
collector; the operator as a local process authenticated as its ServiceAccount; each worker pod's
process (``legacygpu worker start --kubernetes``) with the pod's own token, downloading from an
HTTP server this test runs on loopback (the simulator's worker processes run on this host, so
loopback reaches it). Simulated: the kubelets, which mount the pod's volumes for its process as a
kubelet would (e2e/e2ecluster/podmounts.py): the model cache emptyDir, the ConfigMap and the claim
(bound by the stand-in's provisioner) at the paths the operator gave them; the worker's log says
that it read them from the mounts, not through the API.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import shlex
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_operators import one_operator
from e2ecluster import Kube

from legacygpu.core.modelcards import ModelRepository

REPO = Path(__file__).resolve().parents[2]
API = "legacygpu.io/v1alpha1"

pytestmark = pytest.mark.slow


class _Files(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Files

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def model_server(demo_repository: Path) -> Iterator[_Files]:
    server = _Files(("127.0.0.1", 0), _Handler)
    server.files = {"/models/digits.onnx": (demo_repository / "digits" / "model.onnx").read_bytes()}
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def operator(simulated_kube: Kube, namespace: str, worker_command: Any, demo_repository: Path,
             tmp_path: Path) -> Iterator[Kube]:
    kube = simulated_kube
    # The pod's cache and sources folders (/var/lib/legacygpu/...) are its volumes, mounted for its process.
    worker_command(shlex.join([
        sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes", "--backend", "onnxruntime",
        "--model-dir", str(demo_repository),
    ]))
    with one_operator(kube, namespace, tmp_path):
        yield kube


def _cluster(name: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": name},
            "spec": {"replicas": 1, "backend": "onnxruntime", "serviceAccountName": "legacygpu-worker",
                     "modelSources": sources}}


def _guide_example(namespace: str) -> list[dict[str, Any]]:
    """The InferenceCluster and InferenceTask of the guide's storageUri example, in ``namespace``."""
    text = (REPO / "docs" / "CLUSTER_DEPLOYMENT_GUIDE.md").read_text()
    block = text.split("<!-- storageUri example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    docs = [d for d in yaml.safe_load_all(block) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


def _task(name: str, cluster: str, model: str) -> dict[str, Any]:
    task = yaml.safe_load((REPO / "examples" / "kubernetes" / "task-tensor.yaml").read_text())
    task["metadata"] = {"name": name}
    task["spec"].update(clusterRef=cluster, model=model)
    return dict(task)  # the 8x8 digit 7


def _degraded(kube: Kube, namespace: str, cluster: str, reason: str) -> dict[str, Any] | None:
    body = kube.get(API, "InferenceCluster", cluster, namespace) or {}
    for condition in (body.get("status") or {}).get("conditions") or ():
        if condition["type"] == "Degraded" and condition["status"] == "True" and condition["reason"] == reason:
            return dict(condition)
    return None


def _pods(kube: Kube, namespace: str, cluster: str) -> list[Any]:
    return list(kube.core.list_namespaced_pod(namespace, label_selector=f"legacygpu.io/cluster={cluster}").items)


def test_models_from_http_and_a_configmap_serve_tasks_and_a_wrong_sha256_degrades_the_cluster(
    operator: Kube, namespace: str, model_server: _Files, demo_repository: Path
) -> None:
    kube = operator
    onnx = model_server.files["/models/digits.onnx"]
    digest = hashlib.sha256(onnx).hexdigest()
    card = ModelRepository(demo_repository).get("digits").model_dump(mode="json", exclude={"name", "file"})
    # As the guide's `kubectl create configmap --from-file` makes it: a binary file goes to binaryData.
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "digits-model"},
                "binaryData": {"model.onnx": base64.b64encode(onnx).decode()}}, namespace)
    kube.core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "10Mi"}}}})  # fmt: skip
    (kube.claim_dir(namespace, "models") / "digits").mkdir()
    (kube.claim_dir(namespace, "models") / "digits" / "model.onnx").write_bytes(onnx)
    url = f"http://127.0.0.1:{model_server.server_address[1]}/models/digits.onnx"
    cluster, guide_task = _guide_example(namespace)  # as written, plus an http and a pvc source
    # The http source first: the ConfigMap holds the same file, and the cache (by sha256) would serve it.
    cluster["spec"]["modelSources"].insert(0, {"name": "digits-http", "storageUri": url, "sha256": digest,
                                               "card": card})
    cluster["spec"]["modelSources"].append({"name": "digits-pvc", "storageUri": "pvc://models/digits/model.onnx",
                                            "card": card})
    kube.apply(cluster, namespace)
    kube.wait_condition(API, "InferenceCluster", "fetched", "WorkersReady", namespace=namespace, timeout=240)
    assert model_server.requests == ["/models/digits.onnx"]

    kube.apply(guide_task, namespace)
    kube.apply(_task("digit-http", "fetched", "digits-http"), namespace)
    kube.apply(_task("digit-pvc", "fetched", "digits-pvc"), namespace)
    for name in ("digit-fetched", "digit-http", "digit-pvc"):
        def done(name: str = name) -> dict[str, Any] | None:
            task = kube.get(API, "InferenceTask", name, namespace) or {}
            return task if (task.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

        task = kube.wait_for(done, timeout=120, what=f"task {name} finished")
        assert task["status"]["phase"] == "Succeeded", task["status"]
        assert task["status"]["result"]["top_k"][0]["label"] == "7", task["status"]["result"]

    (pod,) = _pods(kube, namespace, "fetched")
    stats = json.loads(pod.metadata.annotations["legacygpu.io/worker-stats"])
    assert {m: s["phase"] for m, s in stats["modelFetch"].items()} == {"digits-http": "Fetched",
                                                                       "digits-cm": "Fetched"}
    assert {"digits-http", "digits-cm"} <= set(stats["models"]) and not stats.get("modelErrors")
    log = (kube.pod_dir(namespace, pod.metadata.name) / "worker.log").read_text()
    assert f"model digits-http: fetching {url} ({len(onnx) / 1024:.1f} KiB)" in log, log[-3000:]
    assert f"model digits-http: {len(onnx) / 1024:.1f} KiB of {len(onnx) / 1024:.1f} KiB (100%)" in log, log[-3000:]
    # The ConfigMap and the claim came from the pod's mounts, not through the API.
    sources = "/var/lib/legacygpu/sources"
    assert (f"model digits-cm: configmap://digits-model/model.onnx read from ConfigMap digits-model mounted at "
            f"{sources}/configmap/digits-model") in log, log[-3000:]
    assert "read through the API" not in log, log[-3000:]
    assert (f"model digits-pvc: pvc://models/digits/model.onnx read from claim models mounted at "
            f"{sources}/pvc/models/digits") in log, log[-3000:]
    assert not Path("/var/lib/legacygpu").exists(), "the worker's mounts wrote the machine's /var/lib"

    # The same URL under a sha256 it does not have: the model is not served and the cluster says why.
    kube.apply(_cluster("badsum", [{"name": "digits-http", "storageUri": url, "sha256": "0" * 64, "card": card}]),
               namespace)
    condition = kube.wait_for(lambda: _degraded(kube, namespace, "badsum", "ModelLoadFailed"), timeout=240,
                              what="Degraded/ModelLoadFailed for the wrong sha256")
    assert "could not load model(s) digits-http named in spec.modelSources" in condition["message"], condition
    assert f"sha256 {digest}, but spec.modelSources says {'0' * 64}" in condition["message"], condition
