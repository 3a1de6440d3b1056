"""The CRDs: generated from one source, in step with crds/, described, and rejecting bad objects.

Bad manifests are validated offline the way the API server validates them
(defaults, OpenAPI with unknown fields refused, CEL rules); the same list is
applied to the real API server by the e2e tier.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from crd_validation import schema_for, validate

from legacygpu.cli import main
from legacygpu.core import modelcards, scheduling
from legacygpu.core.tasks import Phase, Reason
from legacygpu.operator.crdgen import all_crds, crd_filename, render, render_all
from legacygpu.operator.schema_cluster import BACKENDS
from legacygpu.operator.schema_task import MODEL_NAME_PATTERN

REPO = Path(__file__).resolve().parents[2]
BAD = yaml.safe_load((Path(__file__).parent / "bad_manifests.yaml").read_text())
EXAMPLES = REPO / "examples" / "kubernetes"

VALID_CLUSTER: dict[str, Any] = {
    "apiVersion": "legacygpu.io/v1alpha1", "kind": "InferenceCluster", "metadata": {"name": "c"},
    "spec": {"replicas": 2},
}
VALID_TASK: dict[str, Any] = {
    "apiVersion": "legacygpu.io/v1alpha1", "kind": "InferenceTask", "metadata": {"name": "t"},
    "spec": {
        "clusterRef": "digits", "model": "digits",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.5]}],
    },
}


def bad_case(kind: str, entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(manifest, old manifest or None) for one entry of bad_manifests.yaml."""
    base = VALID_CLUSTER if kind == "cluster" else VALID_TASK
    manifest = copy.deepcopy(base)
    for field in entry.get("remove", ()):
        manifest["spec"].pop(field)
    manifest["spec"].update(entry.get("spec", {}))
    old = None
    if "old" in entry:
        old = copy.deepcopy(base)
        old["spec"].update(entry["old"])
    return manifest, old


def test_checked_in_crds_match_the_schema_source() -> None:
    for manifest in all_crds():
        path = REPO / "crds" / crd_filename(manifest)
        assert path.read_text() == render(manifest), f"{path} drifted: run `legacygpu operator crds --output-dir crds`"


def test_cli_prints_the_same_crds() -> None:
    result = CliRunner().invoke(main, ["operator", "crds"])
    assert result.exit_code == 0, result.output
    assert result.output == render_all()
    assert [d["kind"] for d in yaml.safe_load_all(result.output)] == ["CustomResourceDefinition"] * 2


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        found += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _walk(schema["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("kind", ["InferenceCluster", "InferenceTask"])
def test_every_field_is_described_and_structural(kind: str) -> None:
    for path, schema in _walk(schema_for(kind), kind):
        if path.endswith(".metadata"):
            continue
        assert schema.get("description"), f"{path} has no description"
        free = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string")
        assert schema.get("type") or free, f"{path} has no type (not structural)"


def test_crd_shape() -> None:
    cluster, task = all_crds()
    for crd, short in ((cluster, "icl"), (task, "itask")):
        names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
        assert names["shortNames"] == [short] and names["categories"] == ["legacygpu"]
        assert crd["spec"]["group"] == "legacygpu.io" and version["name"] == "v1alpha1"
        assert "status" in version["subresources"]
    task_columns = [c["name"] for c in task["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert {"Phase", "Worker", "Attempts", "Age"} <= set(task_columns)
    cluster_columns = [c["name"] for c in cluster["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert {"Ready", "Desired", "Age"} <= set(cluster_columns)
    assert cluster["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


def test_enumerations_come_from_the_shared_core() -> None:
    task = schema_for("InferenceTask")["properties"]
    cluster = schema_for("InferenceCluster")["properties"]["spec"]["properties"]
    assert task["status"]["properties"]["phase"]["enum"] == [p.value for p in Phase]
    assert task["status"]["properties"]["reason"]["enum"] == [r.value for r in Reason]
    tensor = task["spec"]["properties"]["inputs"]["items"]["properties"]
    assert tensor["datatype"]["enum"] == list(modelcards.DATATYPES)
    assert cluster["schedulingStrategy"]["enum"] == sorted(scheduling.STRATEGIES)
    assert modelcards._NAME.pattern == MODEL_NAME_PATTERN
    from legacygpu.worker.backends import BACKENDS as WORKER_BACKENDS

    assert set(BACKENDS) == set(WORKER_BACKENDS)


def test_defaults_are_filled_in() -> None:
    from crd_validation import apply_defaults

    spec = apply_defaults(schema_for("InferenceCluster"), copy.deepcopy(VALID_CLUSTER))["spec"]
    assert spec["deviceResource"] == "legacygpu.io/gpu"
    assert spec["schedulingStrategy"] == "least-loaded" and spec["tasksPerWorker"] == 2 and spec["suspend"] is False
    task = apply_defaults(schema_for("InferenceTask"), copy.deepcopy(VALID_TASK))["spec"]
    assert (task["priority"], task["timeoutSeconds"], task["maxRetries"], task["cancel"]) == (0, 600, 3, False)


def test_valid_bases_pass() -> None:
    assert validate(VALID_CLUSTER) == []
    assert validate(VALID_TASK) == []
    assert validate(VALID_TASK, old=VALID_TASK) == []


def _example_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_examples_are_valid() -> None:
    docs = _example_docs()
    kinds = [d["kind"] for d in docs]
    assert kinds.count("InferenceCluster") == 1 and kinds.count("InferenceTask") >= 13
    for doc in docs:
        if doc["kind"] in ("InferenceCluster", "InferenceTask"):
            assert validate(doc) == [], doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("kind", "entry"),
    [("cluster", e) for e in BAD["cluster"]] + [("task", e) for e in BAD["task"]],
    ids=[f"cluster: {e['name']}" for e in BAD["cluster"]] + [f"task: {e['name']}" for e in BAD["task"]],
)
def test_bad_manifest_is_rejected_naming_the_field(kind: str, entry: dict[str, Any]) -> None:
    manifest, old = bad_case(kind, entry)
    problems = validate(manifest, old=old)
    assert problems, f"{entry['name']} was accepted"
    field = entry["field"]
    leaf = re.split(r"[.\[]", field)[-1].rstrip("]")
    assert any(field in p or (p.startswith(field.rsplit(".", 1)[0]) and leaf in p) for p in problems), problems


def test_generated_manifests_are_valid_kubernetes_objects() -> None:
    """CRDs, RBAC and the worker Pod/Service validate strictly against the Kubernetes 1.37 schemas."""
    import kubernetes_validate

    from legacygpu.operator.config import OperatorConfig
    from legacygpu.operator.pods import build_service, build_worker_pod
    from legacygpu.operator.rbac import rbac_manifests

    spec = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())["spec"]
    docs = [
        *all_crds(),
        *rbac_manifests(namespace="ops", worker_namespaces=["ml"]),
        build_worker_pod(cluster="digits", namespace="ml", name="digits-worker-a", spec=spec, config=OperatorConfig()),
        build_service(cluster="digits", namespace="ml", health_port=8081),
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
