"""Workers that cannot work say so, and a fixed pod template rolls them, on the real control plane.

Real: the API server (RBAC, SubjectAccessReviews), scheduler and garbage collector; the operator as
a local process authenticated as its ServiceAccount; each worker pod's process (``legacygpu worker
start --kubernetes`` on the demo model) with the pod's own ServiceAccount token, as the node
simulator runs it. Simulated: only the kubelets.

The story is the one an administrator met: worker pods under a ServiceAccount without the worker
Role stayed ``Running 0/1`` while the cluster said ``Degraded=False``. Now the cluster says
``WorkerForbidden`` and names the account; changing ``spec.serviceAccountName`` replaces the pods;
a model of ``spec.models`` that no worker can load shows as ``ModelLoadFailed``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_operators import one_operator
from e2ecluster import Kube

API = "legacygpu.io/v1alpha1"

pytestmark = pytest.mark.slow


@pytest.fixture
def operator(
    simulated_kube: Kube, namespace: str, worker_command: Any, demo_repository: Path, tmp_path: Path
) -> Iterator[Kube]:
    kube = simulated_kube
    worker_command(shlex.join([sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes",
                               "--backend", "onnxruntime", "--model-dir", str(demo_repository)]))
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "no-role"}}, namespace)
    with one_operator(kube, namespace, tmp_path):
        yield kube


def _degraded(kube: Kube, namespace: str, reason: str) -> dict[str, Any] | None:
    body = kube.get(API, "InferenceCluster", "digits", namespace)
    for condition in ((body or {}).get("status") or {}).get("conditions") or ():
        if condition["type"] == "Degraded" and condition["status"] == "True" and condition["reason"] == reason:
            return dict(condition)
    return None


def _pods(kube: Kube, namespace: str) -> dict[str, Any]:
    items = kube.core.list_namespaced_pod(namespace, label_selector="legacygpu.io/cluster=digits").items
    return {p.metadata.name: p for p in items if p.metadata.deletion_timestamp is None}


def test_forbidden_workers_and_unloadable_models_degrade_the_cluster_and_a_fix_rolls_the_pods(
    operator: Kube, namespace: str
) -> None:
    kube = operator
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "digits"},
               "spec": {"replicas": 2, "backend": "onnxruntime", "serviceAccountName": "no-role"}}
    kube.apply(cluster, namespace)
    forbidden = kube.wait_for(lambda: _degraded(kube, namespace, "WorkerForbidden"), timeout=120,
                              what="Degraded/WorkerForbidden")
    assert f"ServiceAccount {namespace}/no-role" in forbidden["message"]
    assert "inferencetasks" in forbidden["message"], forbidden
    first = kube.wait_for(lambda: _pods(kube, namespace) if len(_pods(kube, namespace)) == 2 else None,
                          timeout=120, what="2 worker pods")
    assert {p.spec.service_account_name for p in first.values()} == {"no-role"}

    kube.custom.patch_namespaced_custom_object(
        "legacygpu.io", "v1alpha1", namespace, "inferenceclusters", "digits",
        {"spec": {"serviceAccountName": "legacygpu-worker", "models": ["digits", "missing-model"]}},
    )
    unloaded = kube.wait_for(lambda: _degraded(kube, namespace, "ModelLoadFailed"), timeout=180,
                             what="Degraded/ModelLoadFailed once the workers may work")
    assert "could not load model(s) missing-model named in spec.models" in unloaded["message"], unloaded
    now = _pods(kube, namespace)
    assert not set(now) & set(first), "the pods of the old template were replaced"
    assert {p.spec.service_account_name for p in now.values()} == {"legacygpu-worker"}
    events = kube.core.list_namespaced_event(namespace).items
    assert {e.reason for e in events if e.involved_object.name == "digits"} >= {"WorkerRolled", "WorkerForbidden"}
