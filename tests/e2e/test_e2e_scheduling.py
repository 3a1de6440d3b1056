"""The real kube-scheduler places GPU pods on GPU nodes and respects their capacity.

On the local cluster: three simulated nodes with two ``legacygpu.io/gpu`` each, so six
one-GPU pods fit (at most two per node, and the simulator marks them Running) and a
seventh stays Pending with an Unschedulable condition naming the resource. On a
bring-your-own cluster the same is done with whatever GPUs are free there.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
from e2ecluster import Kube

RESOURCE = "legacygpu.io/gpu"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def _gpu_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "gpu-capacity"}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"legacygpu.io/gpu.present": "true"},
            "containers": [
                {"name": "main", "image": PAUSE_IMAGE, "resources": {"limits": {RESOURCE: "1"}}},
            ],
        },
    }


def test_scheduler_fills_gpu_capacity_and_leaves_the_rest_pending(kube: Kube, namespace: str) -> None:
    if kube.simulated:  # wait for other tests' GPU pods to be finalised
        kube.wait_for(lambda: sum(kube.free_resource(RESOURCE).values()) == 6, timeout=90, what="all 6 GPUs free")
    free = kube.free_resource(RESOURCE)
    total = sum(free.values())
    if total == 0 or total > 16:
        pytest.skip(f"needs between 1 and 16 free {RESOURCE} on the cluster, found {total}")

    names = [f"gpu-{i}" for i in range(total)]
    for name in names:
        kube.core.create_namespaced_pod(namespace, _gpu_pod(name))

    def all_bound() -> list[Any] | None:
        pods = [kube.core.read_namespaced_pod(n, namespace) for n in names]
        return pods if all(p.spec.node_name for p in pods) else None

    pods = kube.wait_for(all_bound, timeout=120, what=f"{total} GPU pods to be scheduled")
    per_node = collections.Counter(p.spec.node_name for p in pods)
    for node, count in per_node.items():
        assert count <= free[node], f"{node} got {count} one-GPU pods but had {free[node]} free"

    kube.core.create_namespaced_pod(namespace, _gpu_pod("one-too-many"))

    def unschedulable() -> Any:
        pod = kube.core.read_namespaced_pod("one-too-many", namespace)
        cond = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        return cond[0] if cond and cond[0].status == "False" else None

    cond = kube.wait_for(unschedulable, timeout=60, what="the extra pod's PodScheduled=False")
    assert cond.reason == "Unschedulable"
    assert f"Insufficient {RESOURCE}" in cond.message
    pod = kube.core.read_namespaced_pod("one-too-many", namespace)
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"

    if kube.simulated:  # the simulator plays the kubelet for the bound pods
        for name in names:
            running = kube.wait_pod_phase(namespace, name, "Running", timeout=60)
            assert running.status.pod_ip.startswith("127.1.")
            ready = {c.type: c.status for c in running.status.conditions}
            assert ready["Ready"] == "True"

        # Freeing one GPU lets the scheduler place the pending pod.
        kube.core.delete_namespaced_pod(names[0], namespace)
        kube.wait_gone("v1", "Pod", names[0], namespace, timeout=60)
        late = kube.wait_pod_phase(namespace, "one-too-many", "Running", timeout=120)
        assert late.spec.node_name == pods[0].spec.node_name
