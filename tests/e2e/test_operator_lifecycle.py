"""The operator on a real control plane: kube-apiserver, kube-scheduler, kube-controller-manager.

Real: the API server (CRDs with CEL, RBAC, resourceVersions), the scheduler placing worker pods on
GPU nodes by their ``legacygpu.io/gpu`` capacity, the garbage collector, the operator as a local
process authenticated as its ServiceAccount, and each worker pod's process (``legacygpu worker
start --kubernetes``, run by the node simulator with the pod's own ServiceAccount token).
Simulated: only the kubelets (the simulator plays them; there is no container runtime here).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2ecluster import Kube

from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.rbac import rbac_manifests

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "kubernetes"
API = "legacygpu.io/v1alpha1"

pytestmark = pytest.mark.slow


def _phase(kube: Kube, namespace: str, name: str, *phases: str) -> dict[str, Any] | None:
    task = kube.get(API, "InferenceTask", name, namespace)
    return task if ((task or {}).get("status") or {}).get("phase") in phases else None


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.fixture
def operator(simulated_kube: Kube, namespace: str, worker_command: Any, demo_repository: Path,
             tmp_path: Path) -> Iterator[Kube]:
    """CRDs, RBAC, worker processes on the demo models (plus a slow one), and the operator process."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import slow_model

    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx

    kube = simulated_kube
    kube.apply(all_crds())
    kube.apply(rbac_manifests(namespace=namespace))
    models = tmp_path / "models"
    shutil.copytree(demo_repository, models)
    slow = slow_model(tmp_path / "slow.onnx", layers=80)
    ModelRepository(models).add(card_from_onnx("slow", slow), slow)
    worker_command(shlex.join([sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes",
                               "--backend", "onnxruntime", "--model-dir", str(models)]))
    token = kube.token(namespace, "legacygpu-operator")
    kubeconfig = kube.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig", namespace)
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "legacygpu.cli", "operator", "run", "--kubeconfig", str(kubeconfig),
         "--namespace", namespace, "--no-metrics", "--worker-image", "legacygpu/worker:e2e"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield kube
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        sys.stdout.write((tmp_path / "operator.log").read_text()[-4000:])


def test_tasks_run_workers_recover_and_the_cluster_goes_away(operator: Kube, namespace: str) -> None:
    kube = operator
    cluster = _docs("cluster.yaml")[0]
    cluster["spec"].update(serviceAccountName="legacygpu-worker", backend="onnxruntime", tasksPerWorker=1)
    kube.apply(cluster, namespace)
    kube.wait_condition(API, "InferenceCluster", "digits", "WorkersReady", namespace=namespace, timeout=180)
    pods = kube.core.list_namespaced_pod(namespace, label_selector="legacygpu.io/cluster=digits").items
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name and pod.metadata.owner_references[0].kind == "InferenceCluster"
        assert pod.spec.containers[0].resources.limits["legacygpu.io/gpu"] == "1"

    for name in ("task-tensor.yaml", "task-image.yaml", "task-uri.yaml"):
        kube.apply(_docs(name), namespace)
    expected = {"digit-tensor": "7", "digit-image": "7", "digit-uri": "3"}
    for name, label in expected.items():
        task = kube.wait_for(lambda n=name: _phase(kube, namespace, n, "Succeeded", "Failed"), timeout=120,
                             what=f"{name} finished")
        assert task["status"]["phase"] == "Succeeded", task["status"]
        assert task["status"]["result"]["top_k"][0]["label"] == label
        assert task["status"]["attempts"] == 1

    # A worker pod deleted in the middle of a task: the task is retried on the other worker.
    slow = {"apiVersion": API, "kind": "InferenceTask", "metadata": {"name": "slow"},
            "spec": {"clusterRef": "digits", "model": "slow", "maxRetries": 2,
                     "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": [0.01] * 1024}]}}
    kube.apply(slow, namespace)
    running = kube.wait_for(lambda: _phase(kube, namespace, "slow", "Running"), timeout=60, what="slow task running")
    victim = running["status"]["workerRef"]["pod"]
    kube.core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)
    done = kube.wait_for(lambda: _phase(kube, namespace, "slow", "Succeeded", "Failed"), timeout=180,
                         what="slow task finished")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["attempts"] == 2 and done["status"]["workerRef"]["pod"] != victim
    kube.wait_condition(API, "InferenceCluster", "digits", "WorkersReady", namespace=namespace, timeout=120)

    # A worker that no node can hold: the scheduler's reason shows in the cluster's conditions.
    big = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "big"},
           "spec": {"replicas": 1, "gpusPerWorker": 3, "serviceAccountName": "legacygpu-worker"}}
    kube.apply(big, namespace)
    degraded = kube.wait_condition(API, "InferenceCluster", "big", "Degraded", namespace=namespace, timeout=60)
    condition = next(c for c in degraded["status"]["conditions"] if c["type"] == "Degraded")
    assert condition["reason"] == "Unschedulable" and "Insufficient legacygpu.io/gpu" in condition["message"]

    # Deleting the cluster: finalizer handled by the operator, pods removed by the garbage collector.
    kube.delete(cluster, namespace)
    kube.wait_gone(API, "InferenceCluster", "digits", namespace, timeout=60)
    kube.wait_for(lambda: not kube.core.list_namespaced_pod(
        namespace, label_selector="legacygpu.io/cluster=digits").items, timeout=60, what="worker pods gone")
