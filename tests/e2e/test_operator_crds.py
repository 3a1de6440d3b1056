"""The operator's CRDs on a real kube-apiserver: accepted, explained, printed, and strict.

Every bad manifest of ``tests/operator/bad_manifests.yaml`` (the list the offline schema tests use)
is sent to the real API server, which must refuse it (422) with a message naming the field. The
examples must be accepted (server-side dry run, so nothing runs).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2ecluster import Kube
from kubernetes.client.exceptions import ApiException

from legacygpu.operator.crdgen import all_crds

REPO = Path(__file__).resolve().parents[2]
BAD = yaml.safe_load((REPO / "tests" / "operator" / "bad_manifests.yaml").read_text())
GROUP, VERSION = "legacygpu.io", "v1alpha1"
PLURALS = {"cluster": "inferenceclusters", "task": "inferencetasks"}
BASES: dict[str, dict[str, Any]] = {
    "cluster": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceCluster", "spec": {"replicas": 2}},
    "task": {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceTask",
        "spec": {"clusterRef": "digits", "model": "digits",
                 "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}]},
    },
}


@pytest.fixture(scope="module")
def crds(kube: Kube) -> Kube:
    kube.apply(all_crds())  # waits until each is Established
    return kube


def _manifest(kind: str, entry: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    manifest = copy.deepcopy(BASES[kind])
    manifest["metadata"] = {"name": name}
    for field in entry.get("remove", ()):
        manifest["spec"].pop(field)
    manifest["spec"].update(entry.get("spec", {}))
    old = None
    if "old" in entry:
        old = copy.deepcopy(BASES[kind])
        old["metadata"] = {"name": name}
        old["spec"].update(entry["old"])
    return manifest, old


@pytest.mark.parametrize(
    ("kind", "index"),
    [("cluster", i) for i in range(len(BAD["cluster"]))] + [("task", i) for i in range(len(BAD["task"]))],
    ids=[f"cluster: {e['name']}" for e in BAD["cluster"]] + [f"task: {e['name']}" for e in BAD["task"]],
)
def test_bad_manifest_is_refused_naming_the_field(crds: Kube, namespace: str, kind: str, index: int) -> None:
    entry = BAD[kind][index]
    manifest, old = _manifest(kind, entry, f"bad-{index}")
    custom = crds.custom
    create = custom.create_namespaced_custom_object
    if old is not None:
        create(GROUP, VERSION, namespace, PLURALS[kind], old)
        with pytest.raises(ApiException) as refused:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURALS[kind], manifest["metadata"]["name"], {"spec": manifest["spec"]},
                _content_type="application/merge-patch+json",
            )
    else:
        with pytest.raises(ApiException) as refused:
            create(GROUP, VERSION, namespace, PLURALS[kind], manifest, field_validation="Strict")
    assert refused.value.status in (400, 422), refused.value.body  # 400: strict decoding (unknown field)
    message = json.loads(refused.value.body)["message"]
    field = entry["field"]
    leaf = field.rsplit(".", 1)[-1].split("[")[0]
    assert field in message or leaf in message, message


def test_examples_are_accepted(crds: Kube, namespace: str) -> None:
    accepted: set[str] = set()
    for path in sorted((REPO / "examples" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in ("InferenceCluster", "InferenceTask"):
                continue
            plural = "inferenceclusters" if doc["kind"] == "InferenceCluster" else "inferencetasks"
            crds.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, doc, dry_run="All", field_validation="Strict"
            )
            accepted.add(doc["kind"])
    assert accepted == {"InferenceCluster", "InferenceTask"}  # not vacuous: both kinds were found and sent


def test_defaults_printer_columns_and_explain(crds: Kube, namespace: str) -> None:
    task = copy.deepcopy(BASES["task"])
    task["metadata"] = {"name": "t"}
    stored = crds.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "inferencetasks", task)
    assert (stored["spec"]["priority"], stored["spec"]["timeoutSeconds"], stored["spec"]["maxRetries"]) == (0, 600, 3)
    crd = crds.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "inferencetasks.legacygpu.io")
    assert crd is not None
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert {"Phase", "Worker", "Attempts", "Age"} <= set(columns)
    openapi = json.loads(crds.raw_get(f"/openapi/v3/apis/{GROUP}/{VERSION}"))
    schema = openapi["components"]["schemas"]["io.legacygpu.v1alpha1.InferenceTask"]
    spec = schema["properties"]["spec"]
    assert "clusterRef" in spec["properties"] and spec["properties"]["timeoutSeconds"]["description"]
