"""The chart's RBAC is the operator's own (``rbac_manifests()``), and least privilege elsewhere.

``legacygpu/operator/rbac.py`` is the one source of the operator's and the workers'
permissions; the chart must grant exactly those rules, to the same subjects, in the same
namespaces. With ``fullnameOverride: legacygpu`` the chart's names equal the defaults of
``rbac_manifests()``, so the objects are compared whole (labels: the operator's are a
subset of the chart's). The facade and node agent, which rbac.py does not cover, are held
to explicit least-privilege permission sets. Permissions are compared as sets of
(apiGroup, resource, verb) so that reordering is fine but any extra grant is not.
"""

from __future__ import annotations

from typing import Any

import pytest

from legacygpu.operator.rbac import LEASE_RULES, OPERATOR_RULES, WORKER_RULES, rbac_manifests

from .helmchart import find, render

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _key(doc: dict[str, Any]) -> tuple[str, str | None, str]:
    return doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]


def _chart_rbac(docs: list[dict[str, Any]], components: set[str]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    return {
        _key(d): d for d in docs
        if d["kind"] in RBAC_KINDS and d["metadata"]["labels"]["app.kubernetes.io/component"] in components
    }  # fmt: skip


@pytest.mark.parametrize(
    ("values", "namespace", "worker_namespaces"),
    [
        ({}, "legacygpu-system", None),
        ({"worker": {"namespaces": ["ml", "ml-batch"]}}, "ops", ["ml", "ml-batch"]),
        ({"operator": {"watchNamespaces": ["ml", "ops"]}, "api": {"clusterNamespace": "ml"}}, "ops", ["ml", "ops"]),
    ],
    ids=["default", "worker namespaces", "watched namespaces"],
)
def test_operator_and_worker_rbac_equal_rbac_manifests(
    values: dict[str, Any], namespace: str, worker_namespaces: list[str] | None
) -> None:
    docs = render({"fullnameOverride": "legacygpu", **values}, namespace=namespace)
    chart = _chart_rbac(docs, {"operator", "worker"})
    expected = {_key(d): d for d in rbac_manifests(namespace=namespace, worker_namespaces=worker_namespaces)}
    assert chart.keys() == expected.keys()
    for key, want in expected.items():
        got = chart[key]
        assert want["metadata"]["labels"].items() <= got["metadata"]["labels"].items(), key
        if "rules" in want:
            assert _grants(got["rules"]) == _grants(want["rules"]), key
            assert got["rules"] == want["rules"], f"{key}: same grants, but the rules were regrouped"
        for field in ("roleRef", "subjects"):
            assert got.get(field) == want.get(field), (key, field)


def test_operator_tells_its_worker_pods_the_chart_service_account() -> None:
    for values, account in [({}, "lg-legacygpu-worker"), ({"worker": {"serviceAccount": {"name": "gpu"}}}, "gpu")]:
        docs = render(values)
        (op,) = find(docs, "Deployment", "lg-legacygpu-operator")
        env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["LEGACYGPU_OPERATOR_WORKER_SERVICE_ACCOUNT"] == account
        assert [d["metadata"]["name"] for d in find(docs, "ServiceAccount")
                if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"] == [account]  # fmt: skip
        (binding,) = [d for d in find(docs, "RoleBinding") if d["metadata"]["name"] == "lg-legacygpu-worker"]
        assert binding["subjects"][0]["name"] == account


def test_rules_in_templates_are_the_module_constants() -> None:
    docs = render()
    assert find(docs, "ClusterRole", "lg-legacygpu-operator")[0]["rules"] == OPERATOR_RULES
    assert find(docs, "Role", "lg-legacygpu-operator-leader")[0]["rules"] == LEASE_RULES
    assert find(docs, "Role", "lg-legacygpu-worker")[0]["rules"] == WORKER_RULES


def test_facade_role_is_least_privilege_and_in_its_cluster_namespace() -> None:
    docs = render({"api": {"clusterNamespace": "ml"}}, namespace="ops")
    (role,) = find(docs, "Role", "lg-legacygpu-api")
    assert role["metadata"]["namespace"] == "ml"
    assert _grants(role["rules"]) == {
        *{("legacygpu.io", "inferencetasks", v) for v in ("get", "list", "watch", "create", "patch")},
        *{("legacygpu.io", "inferenceclusters", v) for v in ("get", "list", "watch")},
        *{("", "pods", v) for v in ("get", "list", "watch", "patch")},
        ("", "configmaps", "get"),
    }
    (binding,) = find(docs, "RoleBinding", "lg-legacygpu-api")
    assert binding["metadata"]["namespace"] == "ml"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lg-legacygpu-api", "namespace": "ops"}]
    cluster_wide = [d for d in docs if d["kind"].startswith("Cluster")
                    and d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"]  # fmt: skip
    assert not cluster_wide, "no cluster-wide grant for the facade"


def test_node_agent_may_only_read_and_patch_nodes() -> None:
    docs = render()
    (role,) = find(docs, "ClusterRole", "lg-legacygpu-node-agent")
    assert _grants(role["rules"]) == {("", "nodes", "get"), ("", "nodes", "patch")}


def test_no_wildcards_and_no_secrets_anywhere() -> None:
    docs = render({"worker": {"namespaces": ["ml"]}, "metrics": {"serviceMonitor": {"enabled": True}}})
    for doc in docs:
        for rule in doc.get("rules", []) if doc["kind"] in RBAC_KINDS else []:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], doc["metadata"]["name"]
            assert "secrets" not in rule["resources"], doc["metadata"]["name"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), doc["metadata"]["name"]


def test_rbac_create_false_keeps_accounts_and_drops_roles() -> None:
    docs = render({"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"] in RBAC_KINDS[1:]]
    assert len(find(docs, "ServiceAccount")) == 4


def test_service_account_create_false_uses_the_given_names() -> None:
    values = {c: {"serviceAccount": {"create": False, "name": f"byo-{c.lower()}"}}
              for c in ("operator", "api", "nodeAgent", "worker")}  # fmt: skip
    docs = [d for d in render(values) if "helm.sh/hook" not in (d["metadata"].get("annotations") or {})]
    assert not find(docs, "ServiceAccount"), "only the uninstall hook's own account (a hook object) is made"
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["serviceAccountName"]
            for d in docs if d["kind"] in ("Deployment", "DaemonSet")}  # fmt: skip
    assert pods == {"lg-legacygpu-operator": "byo-operator", "lg-legacygpu-api": "byo-api",
                    "lg-legacygpu-node-agent": "byo-nodeagent"}  # fmt: skip
    subjects = {s["name"] for d in docs if d["kind"].endswith("Binding") for s in d["subjects"]}
    assert subjects == {"byo-operator", "byo-api", "byo-nodeagent", "byo-worker"}


def test_disabled_components_leave_nothing_behind() -> None:
    docs = render({"operator": {"enabled": False}, "api": {"enabled": False}, "nodeAgent": {"enabled": False}})
    assert docs == [], [_key(d) for d in docs]
