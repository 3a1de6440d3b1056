"""``spec.modelSources``: the storageUri parts, what a worker pod gets for each scheme, what the cluster says.

Pure functions (pod building, cluster status); the pod is validated against the Kubernetes 1.37
schemas. The worker side is tests/unit/worker/test_modelfetch.py; the whole path on a real API
server is tests/e2e/test_model_sources.py.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from crd_validation import validate

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.contract import ANNOTATION_WORKER_STATS
from legacygpu.core.modelsources import ModelSource, load_sources, parse_storage_uri
from legacygpu.operator.clusterstate import cluster_status, pod_view
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.pods import build_worker_pod, template_hash

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32
SOURCES = [
    {"name": "resnet", "storageUri": "pvc://models/vision/resnet.onnx"},
    {"name": "resnet-int8", "storageUri": "pvc://models/vision/resnet-int8.onnx", "sha256": SHA},
    {"name": "tiny", "storageUri": "configmap://tiny-model/model.onnx"},
    {"name": "remote", "storageUri": "https://models.example/remote.onnx", "sha256": SHA,
     "card": {"postprocess": {"top_k": 3}}},
]


def test_storage_uris_are_parsed_or_refused_with_the_reason() -> None:
    pvc = parse_storage_uri("pvc://models/vision/resnet.onnx")
    assert (pvc.scheme, pvc.name, pvc.path, pvc.remote) == ("pvc", "models", "vision/resnet.onnx", False)
    cm = parse_storage_uri("configmap://tiny-model/model.onnx")
    assert (cm.scheme, cm.name, cm.path) == ("configmap", "tiny-model", "model.onnx")
    assert parse_storage_uri("https://h/m.onnx").remote
    for bad, reason in [("s3://b/m.onnx", "scheme"), ("pvc://models", "relative"), ("pvc://models/../etc", "'..'"),
                        ("pvc://Models/m", "claim name"), ("configmap://c/a/b", "ConfigMap key"),
                        ("http:///m.onnx", "no host"), ("models/m.onnx", "scheme")]:
        with pytest.raises(ValidationError, match=reason):
            parse_storage_uri(bad)
    with pytest.raises(ValidationError, match="needs a sha256"):
        ModelSource.from_spec({"name": "m", "storageUri": "http://h/m.onnx"})
    assert [s.name for s in load_sources(json.dumps(SOURCES))] == ["resnet", "resnet-int8", "tiny", "remote"]


def test_the_guides_storage_uri_examples_are_valid() -> None:
    """The guide's blocks pass the schema and CEL rules (tests/e2e/test_model_sources.py runs the first)."""
    text = (REPO / "docs" / "CLUSTER_DEPLOYMENT_GUIDE.md").read_text()
    section = text.split("<!-- storageUri example", 1)[1]
    example, fragment = [block.split("```", 1)[0] for block in section.split("```yaml\n")[1:3]]
    docs = [d for d in yaml.safe_load_all(example) if d]
    assert [d["kind"] for d in docs] == ["InferenceCluster", "InferenceTask"]
    cluster = docs[0]
    cluster["spec"]["modelSources"] += yaml.safe_load(fragment)["spec"]["modelSources"]
    cluster["spec"]["modelCache"] = yaml.safe_load(fragment)["spec"]["modelCache"]
    assert validate(cluster) == [] and validate(docs[1]) == []
    assert [s.storage_uri.scheme for s in load_sources(json.dumps(cluster["spec"]["modelSources"]))] == \
        ["configmap", "pvc", "https"]
    kubernetes_validate.validate(_pod(cluster["spec"]), "1.37.0", strict=True)


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    return build_worker_pod(cluster="c", namespace="ns", name="c-worker-abcde", spec=spec, config=OperatorConfig())


def test_worker_pods_get_a_cache_and_the_volumes_their_sources_read() -> None:
    pod = _pod({"models": ["digits"], "modelSources": SOURCES})
    kubernetes_validate.validate(pod, "1.37.0", strict=True)
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LEGACYGPU_PRELOAD_MODELS"] == "digits,resnet,resnet-int8,tiny,remote"
    assert json.loads(env["LEGACYGPU_MODEL_SOURCES"]) == SOURCES
    assert env["LEGACYGPU_MODEL_CACHE"] == "/var/lib/legacygpu/cache"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}
    assert mounts["model-cache"] == {"name": "model-cache", "mountPath": "/var/lib/legacygpu/cache"}
    by_source = {json.dumps({k: v for k, v in vol.items() if k != "name"}, sort_keys=True): name
                 for name, vol in volumes.items()}
    claim = by_source[json.dumps({"persistentVolumeClaim": {"claimName": "models", "readOnly": True}})]
    config_map = by_source[json.dumps({"configMap": {"name": "tiny-model", "optional": True}}, sort_keys=True)]
    assert mounts[claim] == {"name": claim, "mountPath": "/var/lib/legacygpu/sources/pvc/models", "readOnly": True}
    assert mounts[config_map]["mountPath"] == "/var/lib/legacygpu/sources/configmap/tiny-model"
    assert len(volumes) == 4, "tmp, the cache, one claim (two sources share it), one ConfigMap; nothing for https"

    own_cache = _pod({"modelSources": SOURCES[3:], "modelCache": {"persistentVolumeClaim": {"claimName": "cache"}}})
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "cache"}} in own_cache["spec"]["volumes"]
    assert len(own_cache["spec"]["volumes"]) == 2


def test_pods_without_sources_are_unchanged_and_a_new_source_rolls_the_pods() -> None:
    plain = _pod({"models": ["digits"]})
    assert [v["name"] for v in plain["spec"]["volumes"]] == ["tmp"]
    assert not any(e["name"].startswith("LEGACYGPU_MODEL_") for e in plain["spec"]["containers"][0]["env"])
    config = OperatorConfig()
    before = template_hash(cluster="c", namespace="ns", spec={"models": ["digits"]}, config=config)
    after = template_hash(cluster="c", namespace="ns", spec={"models": ["digits"], "modelSources": SOURCES[:1]},
                          config=config)
    assert before != after


def _worker(name: str, *, ready: bool, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": {ANNOTATION_WORKER_STATS: json.dumps(stats)}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


STATUS_ARGS: dict[str, Any] = {
    "assigned": {}, "queued": 0, "running": 0, "previous_conditions": None, "selector": "legacygpu.io/cluster=c",
    "now": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_the_cluster_shows_fetch_progress_and_why_a_source_is_not_served() -> None:
    spec = {"replicas": 1, "models": ["digits"], "modelSources": SOURCES[3:]}
    fetching = {"modelFetch": {"remote": {"phase": "Fetching", "bytes": 3 << 20, "totalBytes": 12 << 20,
                                          "percent": 25.0}}}
    status = cluster_status(spec=spec, generation=1, pods=[pod_view(_worker("w1", ready=False, stats=fetching))],
                            **STATUS_ARGS)
    assert _condition(status, "WorkersReady")["message"] == \
        "0/1 workers ready; worker pod w1 fetching model remote: 25% of 12.0 MiB"

    failed = {"models": ["digits"], "modelErrors": {"remote": "model remote: sha256 mismatch: ..."},
              "modelFetch": {"remote": {"phase": "Failed", "message": "model remote: sha256 mismatch: ..."}}}
    status = cluster_status(spec=spec, generation=1, pods=[pod_view(_worker("w1", ready=True, stats=failed))],
                            **STATUS_ARGS)
    degraded = _condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ModelLoadFailed")
    assert degraded["message"] == ("worker pod w1 could not load model(s) remote named in spec.modelSources: "
                                   "remote: model remote: sha256 mismatch: ... (their tasks fail)")
