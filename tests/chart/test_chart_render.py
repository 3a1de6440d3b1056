"""The chart lints, renders and validates: real helm, Kubernetes 1.37 schemas, the real CRDs.

``helm lint --strict`` and ``helm template`` run on the default values and on
``values-full.yaml`` (every optional part switched on). Each rendered object is validated
with ``kubernetes-validate --strict`` against the 1.37 schemas (unknown fields fail); the
prometheus-operator objects, which have no schema there, against a strict schema of the
fields the chart uses (``monitoring_schema.py``). The chart's ``crds/`` must be byte-identical to the
generated ``crds/`` of the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .helmchart import CHART, REPO, find, helm, render
from .monitoring_schema import MONITORING_SCHEMAS

FULL = Path(__file__).resolve().parent / "values-full.yaml"
K8S = "1.37.0"


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render(include_crds=True)


@pytest.fixture(scope="module")
def full_docs() -> list[dict[str, Any]]:
    return render(yaml.safe_load(FULL.read_text()), include_crds=True)


def _validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, MONITORING_SCHEMAS[doc["kind"]])
        return
    kubernetes_validate.validate(doc, K8S, strict=True)


@pytest.mark.parametrize("values_file", [None, FULL], ids=["default", "full"])
def test_helm_lint_strict_passes(values_file: Path | None) -> None:
    out = helm("lint", "--strict", str(CHART), "--kube-version", "1.37.2",
               *(["-f", str(values_file)] if values_file else []))  # fmt: skip
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_default_render_has_every_component(default_docs: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in default_docs}
    assert {
        ("CustomResourceDefinition", "inferenceclusters.legacygpu.io"),
        ("CustomResourceDefinition", "inferencetasks.legacygpu.io"),
        ("Deployment", "lg-legacygpu-operator"),
        ("Deployment", "lg-legacygpu-api"),
        ("DaemonSet", "lg-legacygpu-node-agent"),
        ("Service", "lg-legacygpu-api"),
        ("Service", "lg-legacygpu-operator-metrics"),
        ("Secret", "lg-legacygpu-api-token"),
        ("ServiceAccount", "lg-legacygpu-operator"),
        ("ServiceAccount", "lg-legacygpu-api"),
        ("ServiceAccount", "lg-legacygpu-node-agent"),
        ("ServiceAccount", "lg-legacygpu-worker"),
        ("ClusterRole", "lg-legacygpu-operator"),
        ("ClusterRole", "lg-legacygpu-node-agent"),
        ("Role", "lg-legacygpu-api"),
        ("Role", "lg-legacygpu-worker"),
        ("Role", "lg-legacygpu-operator-leader"),
    } <= kinds
    # Off by default: monitoring objects, PDBs, the Ingress.
    assert not {k for k, _ in kinds} & {"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "Ingress"}


@pytest.mark.parametrize("which", ["default", "full"])
def test_every_rendered_object_is_valid_for_kubernetes_1_37(
    which: str, default_docs: list[dict[str, Any]], full_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if which == "default" else full_docs
    assert len(docs) >= 20
    for doc in docs:
        _validate(doc)


def test_full_values_render_the_optional_parts(full_docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in full_docs}
    assert {"ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "Ingress"} <= kinds
    assert not find(full_docs, "Secret"), "existingSecret given: the chart must not create a token Secret"
    api = find(full_docs, "Deployment", "legacygpu-api")[0]["spec"]["template"]["spec"]
    token = next(e for e in api["containers"][0]["env"] if e["name"] == "LEGACYGPU_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "legacygpu-api-token", "key": "api-token"}
    assert api["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}]
    agent = find(full_docs, "DaemonSet", "legacygpu-node-agent")[0]["spec"]["template"]["spec"]
    assert agent["containers"][0]["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert agent["nodeSelector"] == {"example.com/gpu": "polaris"}
    assert "affinity" not in agent, "a nodeSelector replaces the default GPU-node affinity"
    assert {v["name"]: v["hostPath"]["path"] for v in agent["volumes"] if "hostPath" in v} == {
        "device-plugins": "/var/lib/k0s/kubelet/device-plugins", "sys": "/sys", "dri": "/dev/dri", "kfd": "/dev/kfd",
    }  # fmt: skip
    svc = find(full_docs, "Service", "legacygpu-api")[0]["spec"]
    assert svc["type"] == "NodePort" and svc["ports"][0]["nodePort"] == 30080
    for doc in full_docs:
        if doc["kind"] != "CustomResourceDefinition":
            assert doc["metadata"]["labels"]["team"] == "ml-platform", doc["metadata"]["name"]


def test_every_object_is_labelled_with_its_component_and_names_fit(default_docs: list[dict[str, Any]]) -> None:
    components = {"operator", "api", "node-agent", "worker", "test", "uninstall"}  # `helm test`, pre-delete hook
    for doc in default_docs:
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63 or doc["kind"] == "CustomResourceDefinition", meta["name"]
        if doc["kind"] == "CustomResourceDefinition":
            continue
        labels = meta["labels"]
        assert labels["app.kubernetes.io/component"] in components, meta["name"]
        assert labels["app.kubernetes.io/part-of"] == "legacygpu"
        assert labels["app.kubernetes.io/instance"] == "lg"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    for doc in default_docs:
        if doc["kind"] in ("Deployment", "DaemonSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            template = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= template.items()
            assert selector["app.kubernetes.io/component"] == doc["metadata"]["labels"]["app.kubernetes.io/component"]


def test_long_release_names_are_truncated_to_valid_names() -> None:
    release = "a-very-long-release-name-for-the-legacygpu-platform-chart"  # 56 chars, helm's limit is 53
    docs = render(release=release[:53])
    names = [d["metadata"]["name"] for d in docs]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(set(keys)) == len(keys), "truncation made two objects share a name"
    workloads = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")}
    assert len(workloads) == 3 and all(n.endswith(("-operator", "-api", "-node-agent")) for n in workloads)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_chart_crds_are_byte_identical_to_the_generated_ones() -> None:
    generated = sorted((REPO / "crds").glob("*.yaml"))
    shipped = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in shipped] == [p.name for p in generated]
    for src, copy in zip(generated, shipped, strict=True):
        assert copy.read_bytes() == src.read_bytes(), f"{copy} differs from {src}: run `make chart-crds`"


def test_chart_crds_are_the_operators_crds_and_valid(default_docs: list[dict[str, Any]]) -> None:
    from legacygpu.operator.crdgen import all_crds

    rendered = {d["metadata"]["name"]: d for d in find(default_docs, "CustomResourceDefinition")}
    expected = {c["metadata"]["name"]: c for c in all_crds()}
    assert rendered == expected
    for crd in rendered.values():
        kubernetes_validate.validate(crd, K8S, strict=True)


def test_notes_tell_how_to_get_the_token_and_submit_a_task() -> None:
    out = helm("install", "lg", str(CHART), "--namespace", "ml", "--dry-run=client")
    notes = out.split("NOTES:", 1)[1]
    assert "kubectl -n ml get secret lg-legacygpu-api-token -o jsonpath='{.data.token}' | base64 -d" in notes
    assert "port-forward svc/lg-legacygpu-api 8000:8000" in notes
    assert "/cluster/tasks" in notes and "legacygpu task submit" in notes
    assert "privileged" in notes  # the default opencl health check makes the agent privileged: say so
