"""Autoscaling on the real control plane: a queue of 200 tasks scales a cluster from 1 to 3 workers, then back.

Real: the API server (CRD defaults and CEL), scheduler, one operator process as the operator's
ServiceAccount, one worker process per worker pod on the ``busy`` model (:mod:`e2e_operators`).
Simulated: only the kubelets. The cluster starts at ``minReplicas: 1``; 200 tasks at a target of 10
per worker want 20 workers, clamped to ``maxReplicas: 3``; once they are done and the
``scaleDownDelaySeconds`` have passed it goes back to 1, and Events and the ``Autoscaled`` condition
say why. ``kubectl scale`` goes through the ``/scale`` subresource the same way an HPA does.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_operators import API, GROUP, VERSION, busy_operators, create_tasks, lease_holder, phases
from e2ecluster import Kube

pytestmark = pytest.mark.slow


@pytest.fixture
def operator(
    simulated_kube: Kube, namespace: str, worker_command: Any, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with busy_operators(simulated_kube, namespace, worker_command, tmp_path, names=["a"]) as running:
        yield running["a"]


def _cluster(kube: Kube, namespace: str) -> dict[str, Any]:
    body = kube.get(API, "InferenceCluster", "busy", namespace)
    assert body is not None
    return body


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def test_a_queue_scales_the_cluster_up_and_it_scales_down_after_the_delay(
    simulated_kube: Kube, namespace: str, operator: subprocess.Popen[bytes]
) -> None:
    kube = simulated_kube
    kube.wait_for(lambda: lease_holder(kube, namespace), timeout=90, what="the operator leads")
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "busy"},
               "spec": {"replicas": 1, "tasksPerWorker": 2, "gpusPerWorker": 0, "backend": "onnxruntime",
                        "models": ["busy"],
                        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetLoadPerWorker": 10,
                                        "scaleDownDelaySeconds": 10}}}  # fmt: skip
    stored = kube.apply(cluster, namespace)[0]
    assert stored["spec"]["autoscaling"]["minReplicas"] == 1  # defaults and CEL ran on the API server
    kube.wait_condition(API, "InferenceCluster", "busy", "WorkersReady", namespace=namespace, timeout=180)
    assert _cluster(kube, namespace)["spec"]["replicas"] == 1

    create_tasks(kube, namespace, 200)
    def scaled_up() -> bool:
        body = _cluster(kube, namespace)
        return body["spec"]["replicas"] == 3 and _condition(body, "Autoscaled").get("reason") == "ScaledUp"

    kube.wait_for(scaled_up, timeout=120, what="scaled up to 3, the Autoscaled condition saying why")
    kube.wait_for(lambda: (_cluster(kube, namespace).get("status") or {}).get("readyWorkers") == 3, timeout=180,
                  what="3 ready workers")
    # By the time 3 pods are Ready the queue may already have drained (the condition then says the cluster
    # waits out the delay before it scales down); it never says anything else.
    assert _condition(_cluster(kube, namespace), "Autoscaled").get("reason") in ("ScaledUp", "WaitingToScaleDown")
    kube.wait_for(lambda: phases(kube, namespace)["Succeeded"] == 200, timeout=400,
                  what=f"all 200 tasks Succeeded ({phases(kube, namespace)})")
    kube.wait_for(lambda: _cluster(kube, namespace)["spec"]["replicas"] == 1, timeout=120,
                  what="scaled back down to 1 after the delay")
    kube.wait_for(lambda: len(kube.core.list_namespaced_pod(
        namespace, label_selector="legacygpu.io/cluster=busy").items) == 1, timeout=120, what="one worker pod left")
    reasons = [e.reason for e in kube.core.list_namespaced_event(namespace).items
               if e.involved_object.kind == "InferenceCluster"]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons, reasons
    scale = kube.custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, "inferenceclusters", "busy")
    assert scale["spec"]["replicas"] == 1 and scale["status"]["replicas"] >= 1  # what an HPA reads and writes
