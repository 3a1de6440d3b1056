"""The permissions the operator and the workers need, as RBAC manifests (one source).

``legacygpu operator rbac --namespace NS`` prints them; the Helm chart and the
e2e tests should take their rules from :data:`OPERATOR_RULES` and
:data:`WORKER_RULES` rather than retype them. Least privilege:

* the **operator** (ClusterRole): read and patch both kinds and their status,
  delete finished tasks (TTL), create a batch task's shard tasks and read its
  source ConfigMap, the ``finalizers`` subresource of clusters (its
  pods carry ``blockOwnerDeletion`` owner references), create and delete the
  worker Pods and the headless Services, post Events; kopf lists CRDs and
  namespaces to discover what it serves; it creates SubjectAccessReviews
  to check that the workers' ServiceAccount may do its job (a cluster
  whose workers would get 403 shows ``Degraded``/``WorkerForbidden``).
  The leader-election Lease is a Role in the operator's own namespace.
* a **worker** (Role in its namespace): watch and patch InferenceTasks and
  their status (claim, result, give back), patch its own Pod's stats
  annotation, read input ConfigMaps and create result ConfigMaps, post
  Events. It cannot create tasks, pods, or touch clusters.
"""

from __future__ import annotations

from typing import Any

from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL

__all__ = ["OPERATOR_RULES", "WORKER_RULES", "rbac_manifests"]

OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [CLUSTER_PLURAL], "verbs": ["get", "list", "watch", "patch", "update"]},
    {"apiGroups": [GROUP], "resources": [f"{CLUSTER_PLURAL}/status"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [GROUP], "resources": [f"{CLUSTER_PLURAL}/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": [TASK_PLURAL], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [GROUP], "resources": [f"{TASK_PLURAL}/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]

LEASE_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"]},
]

WORKER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": [TASK_PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{TASK_PLURAL}/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

_LABELS = {"app.kubernetes.io/part-of": "legacygpu"}


def _meta(name: str, namespace: str | None, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**_LABELS, "app.kubernetes.io/component": component}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _granted(
    kind: str, name: str, namespace: str | None, component: str, rules: list[dict[str, Any]],
    account: str, account_namespace: str,
) -> list[dict[str, Any]]:
    """A (Cluster)Role with ``rules`` and the (Cluster)RoleBinding that grants it to ``account``."""
    group = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": f"{group}/v1", "kind": kind, "metadata": _meta(name, namespace, component), "rules": rules},
        {"apiVersion": f"{group}/v1", "kind": f"{kind}Binding", "metadata": _meta(name, namespace, component),
         "roleRef": {"apiGroup": group, "kind": kind, "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}]},
    ]


def rbac_manifests(
    *,
    namespace: str,
    worker_namespaces: list[str] | None = None,
    operator_account: str = "legacygpu-operator",
    worker_account: str = "legacygpu-worker",
) -> list[dict[str, Any]]:
    """ServiceAccounts, roles and bindings for an operator in ``namespace`` and workers in ``worker_namespaces``."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(operator_account, namespace, "operator")},
        *_granted("ClusterRole", operator_account, None, "operator", OPERATOR_RULES, operator_account, namespace),
        *_granted(
            "Role", f"{operator_account}-leader", namespace, "operator", LEASE_RULES, operator_account, namespace
        ),
    ]
    for ns in worker_namespaces or [namespace]:
        docs += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(worker_account, ns, "worker")},
            *_granted("Role", worker_account, ns, "worker", WORKER_RULES, worker_account, ns),
        ]
    return docs
