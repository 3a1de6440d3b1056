"""The control plane is the real thing: version, authentication, RBAC, garbage collection.

These run unchanged against a bring-your-own cluster (``E2E_KUBECONFIG``), except the
version pin and node heartbeat checks, which are about the local build.
"""

from __future__ import annotations

import pytest
from e2ecluster import Kube
from e2ecluster.cluster import kube_version
from kubernetes import client
from kubernetes.client.exceptions import ApiException

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def test_api_server_reports_the_pinned_release(kube: Kube) -> None:
    info = client.VersionApi(kube.api).get_code()
    assert info.major == "1"
    if kube.simulated:
        assert info.git_version == kube_version()
    readyz = kube.raw_get("/readyz", [("verbose", "")])
    assert "[+]etcd ok" in readyz  # the API server really talks to etcd


def _self_subject(api: client.ApiClient) -> str:
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    )
    return str(review.status.user_info.username)


def test_rbac_forbids_a_service_account_without_a_role(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    sa_api = kube.client_for_token(kube.token(namespace, "nobody"))
    try:
        assert _self_subject(sa_api) == f"system:serviceaccount:{namespace}:nobody"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(sa_api).list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert "cannot list resource" in str(denied.value.body)

        kube.apply(
            f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: {namespace}}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [list]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: nobody-reads-pods, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects:
- {{kind: ServiceAccount, name: nobody, namespace: {namespace}}}
"""
        )
        pods = kube.wait_for(lambda: client.CoreV1Api(sa_api).list_namespaced_pod(namespace), what="RBAC grant")
        assert pods.items == []
        with pytest.raises(ApiException) as still_denied:  # the grant is for list in this namespace only
            client.CoreV1Api(sa_api).list_namespaced_pod("kube-system")
        assert still_denied.value.status == 403
    finally:
        sa_api.close()


def test_a_forged_token_is_rejected(kube: Kube) -> None:
    forged = kube.client_for_token("eyJhbGciOiJSUzI1NiJ9.e30.bm90LXNpZ25lZA")
    try:
        with pytest.raises(ApiException) as rejected:
            client.CoreV1Api(forged).list_namespaced_pod("default")
        assert rejected.value.status == 401
    finally:
        forged.close()


def test_garbage_collector_deletes_children_with_their_owner(kube: Kube, namespace: str) -> None:
    owner = kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"k": "v"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    pod = {
        "metadata": {"name": "child", "ownerReferences": [ref]},
        "spec": {"containers": [{"name": "main", "image": PAUSE_IMAGE}]},
    }
    kube.core.create_namespaced_pod(namespace, pod)
    kube.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child-cm", "ownerReferences": [ref]}, "data": {}}
    )
    kube.core.delete_namespaced_config_map("owner", namespace, body={"propagationPolicy": "Background"})
    kube.wait_gone("v1", "ConfigMap", "child-cm", namespace, timeout=90)
    kube.wait_gone("v1", "Pod", "child", namespace, timeout=90)


def test_simulated_nodes_stay_ready_with_lease_heartbeats(simulated_kube: Kube) -> None:
    kube = simulated_kube
    nodes = kube.core.list_node(label_selector="e2e.legacygpu.io/simulated=true").items
    assert len(nodes) == 3
    for node in nodes:
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready["Ready"] == "True", node.metadata.name
        assert not [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]
        assert node.status.allocatable["legacygpu.io/gpu"] == "2"
        assert node.metadata.labels["legacygpu.io/gpu.family"] == "polaris"
    coordination = client.CoordinationV1Api(kube.api)
    name = nodes[0].metadata.name
    first = coordination.read_namespaced_lease(name, "kube-node-lease").spec.renew_time
    renewed = kube.wait_for(
        lambda: (t := coordination.read_namespaced_lease(name, "kube-node-lease").spec.renew_time) > first and t,
        timeout=60,
        what="a lease renewal",
    )
    assert renewed > first
