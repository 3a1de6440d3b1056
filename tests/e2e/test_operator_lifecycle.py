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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2ecluster import Kube

from legacygpu.operator.app import FINALIZER
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.pods import service_name
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


@contextmanager
def _operator_running(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """CRDs, RBAC and the operator process (as its ServiceAccount); stopped on the way out."""
    kube.apply(all_crds())
    kube.apply(rbac_manifests(namespace=namespace))
    token = kube.token(namespace, "legacygpu-operator")
    kubeconfig = kube.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig", namespace)
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "legacygpu.cli", "operator", "run", "--kubeconfig", str(kubeconfig),
             "--namespace", namespace, "--no-metrics", "--worker-image", "legacygpu/worker:e2e"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            _stop(process)
            sys.stdout.write(log_path.read_text()[-4000:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a clean kopf exit), SIGKILL after 30 s; a process that has already exited is left alone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def operator(simulated_kube: Kube, namespace: str, worker_command: Any, demo_repository: Path,
             tmp_path: Path) -> Iterator[Kube]:
    """Worker processes on the demo models (plus a slow one), then CRDs, RBAC and the operator process."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import slow_model

    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx

    models = tmp_path / "models"
    shutil.copytree(demo_repository, models)
    # Several seconds a run: the worker claims (writes Running) only a task that runs over CLAIM_AFTER,
    # and the test must see it Running to delete its pod mid-run (80 layers took about a second).
    slow = slow_model(tmp_path / "slow.onnx", layers=400)
    ModelRepository(models).add(card_from_onnx("slow", slow), slow)
    worker_command(shlex.join([sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes",
                               "--backend", "onnxruntime", "--model-dir", str(models)]))
    with _operator_running(simulated_kube, namespace, tmp_path):
        yield simulated_kube


def test_tasks_run_workers_recover_and_the_cluster_goes_away(operator: Kube, namespace: str) -> None:
    kube = operator
    cluster = _docs("cluster.yaml")[0]
    cluster["spec"].update(serviceAccountName="legacygpu-worker", backend="onnxruntime", tasksPerWorker=1)
    kube.apply(cluster, namespace)
    kube.wait_condition(API, "InferenceCluster", "digits", "WorkersReady", namespace=namespace, timeout=180)
    pods = _cluster_pods(kube, namespace, "digits")
    assert len(pods) == 2
    _assert_owned_by(kube, namespace, "digits", pods)
    for pod in pods:
        assert pod.spec.node_name
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

    # More GPUs than are free, though each worker fits a node: the scheduler binds exactly the
    # workers that fit, the others stay Pending, and the cluster says why.
    _exactly_the_fitting_workers_bind(kube, namespace, held=2)

    # A worker that no node can hold: the scheduler's reason shows in the cluster's conditions.
    big = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "big"},
           "spec": {"replicas": 1, "gpusPerWorker": 3, "serviceAccountName": "legacygpu-worker"}}
    kube.apply(big, namespace)
    degraded = kube.wait_condition(API, "InferenceCluster", "big", "Degraded", namespace=namespace, timeout=60)
    condition = next(c for c in degraded["status"]["conditions"] if c["type"] == "Degraded")
    assert condition["reason"] == "Unschedulable" and "Insufficient legacygpu.io/gpu" in condition["message"]

    # Deleting the cluster: finalizer handled by the operator. Its pods are the cluster's controlled
    # dependents, so the garbage collector removes them even where the operator does not (see
    # test_the_garbage_collector_removes_the_children_the_operator_created for that with the operator stopped).
    _assert_owned_by(kube, namespace, "digits", _cluster_pods(kube, namespace, "digits"))
    kube.delete(cluster, namespace)
    kube.wait_gone(API, "InferenceCluster", "digits", namespace, timeout=60)
    kube.wait_for(lambda: not _cluster_pods(kube, namespace, "digits"), timeout=60, what="worker pods gone")


def _cluster_pods(kube: Kube, namespace: str, cluster: str) -> list[Any]:
    return list(kube.core.list_namespaced_pod(namespace, label_selector=f"legacygpu.io/cluster={cluster}").items)


def _assert_owned_by(kube: Kube, namespace: str, cluster: str, pods: list[Any]) -> None:
    """Each pod's first ownerReference is the cluster itself (its uid), as its controller."""
    uid = kube.get(API, "InferenceCluster", cluster, namespace)["metadata"]["uid"]
    assert pods
    for pod in pods:
        owner = pod.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.uid, owner.controller) == ("InferenceCluster", cluster, uid, True)


def _pod_scheduled(pod: Any) -> Any:
    return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)


def _exactly_the_fitting_workers_bind(kube: Kube, namespace: str, held: int) -> None:
    """A cluster of 2-GPU workers asking for more GPUs than are free, while ``held`` are taken.

    Only ``free // 2`` workers fit on each node, so the bound count depends on where the
    scheduler put the GPUs already held, and is computed from the nodes' free GPUs.
    """
    per_worker, replicas = 2, 3
    nodes = kube.core.list_node(label_selector="legacygpu.io/gpu.present=true").items
    pool = sum(int(n.status.allocatable.get("legacygpu.io/gpu", "0")) for n in nodes)

    def only_ours_held() -> dict[str, int] | None:  # other tests' GPU pods may still be terminating
        free = kube.free_resource()
        return free if sum(free.values()) == pool - held else None

    free = kube.wait_for(only_ours_held, timeout=90, what=f"only this test's {held} GPUs held")
    fitting = sum(n // per_worker for n in free.values())
    assert per_worker * replicas > sum(free.values()) and 0 < fitting < replicas, free
    wide = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "wide"},
            "spec": {"replicas": replicas, "gpusPerWorker": per_worker, "serviceAccountName": "legacygpu-worker",
                     "backend": "onnxruntime"}}  # fmt: skip
    kube.apply(wide, namespace)

    def settled() -> tuple[list[Any], list[Any]] | None:
        pods = _cluster_pods(kube, namespace, "wide")
        bound = [p for p in pods if p.spec.node_name]
        pending = [p for p in pods if not p.spec.node_name and getattr(_pod_scheduled(p), "status", "") == "False"]
        return (bound, pending) if len(bound) == fitting and len(pending) == replicas - fitting else None

    bound, pending = kube.wait_for(settled, timeout=120, what=f"{fitting} of {replicas} wide workers bound")
    for pod in bound:
        assert free[pod.spec.node_name] >= per_worker, (pod.spec.node_name, free)
    for pod in pending:
        cond = _pod_scheduled(pod)
        assert cond.reason == "Unschedulable" and "Insufficient legacygpu.io/gpu" in cond.message, cond
    degraded = kube.wait_condition(API, "InferenceCluster", "wide", "Degraded", namespace=namespace, timeout=60)
    condition = next(c for c in degraded["status"]["conditions"] if c["type"] == "Degraded")
    assert condition["reason"] == "Unschedulable" and "Insufficient legacygpu.io/gpu" in condition["message"]
    assert any(p.metadata.name in condition["message"] for p in pending), condition
    # nothing more binds: the GPUs are still all taken
    assert len([p for p in _cluster_pods(kube, namespace, "wide") if p.spec.node_name]) == fitting
    kube.delete(wide, namespace)
    kube.wait_gone(API, "InferenceCluster", "wide", namespace, timeout=60)


def test_the_garbage_collector_removes_the_children_the_operator_created(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """The operator's worker pod and Service, removed by kube-controller-manager's garbage collector alone.

    The operator creates them and is then stopped; with its finalizer removed by hand the cluster
    goes at once, and only the owner references the operator wrote (``kopf.adopt`` in the
    reconciler) tell the garbage collector to remove the children: a missing one, or one whose
    apiVersion and kind the garbage collector cannot resolve, leaves them behind.
    """
    # A nodeSelector no node matches keeps the pod unbound: no kubelet (or simulator), no worker process.
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "orphaned"},
               "spec": {"replicas": 1, "gpusPerWorker": 0, "serviceAccountName": "legacygpu-worker",
                        "nodeSelector": {"e2e.legacygpu.io/no-such-node": "true"}}}  # fmt: skip
    with _operator_running(kube, namespace, tmp_path) as process:
        kube.apply(cluster, namespace)
        pods = kube.wait_for(lambda: _cluster_pods(kube, namespace, "orphaned"), timeout=120,
                             what="the operator's worker pod")  # fmt: skip
        kube.wait_for(lambda: kube.get("v1", "Service", service_name("orphaned"), namespace), timeout=60,
                      what="the operator's headless Service")  # fmt: skip
        _stop(process)  # from here on nothing of the project's runs
    _assert_owned_by(kube, namespace, "orphaned", pods)
    assert [p.metadata.name for p in _cluster_pods(kube, namespace, "orphaned")] == [pods[0].metadata.name]
    assert FINALIZER in kube.get(API, "InferenceCluster", "orphaned", namespace)["metadata"]["finalizers"]

    clusters = kube.dynamic.resources.get(api_version=API, kind="InferenceCluster")
    clusters.patch(name="orphaned", namespace=namespace, body={"metadata": {"finalizers": None}},
                   content_type="application/merge-patch+json")  # fmt: skip
    kube.delete(cluster, namespace)
    kube.wait_gone(API, "InferenceCluster", "orphaned", namespace, timeout=60)
    # the garbage collector may need a discovery resync (30 s) to learn the CRD's kind
    kube.wait_gone("v1", "Pod", pods[0].metadata.name, namespace, timeout=180)
    kube.wait_gone("v1", "Service", service_name("orphaned"), namespace, timeout=180)
