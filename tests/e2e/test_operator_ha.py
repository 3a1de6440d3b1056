"""Two operator replicas with leader election on a real API server: one acts, the other takes over.

Both are local processes authenticated as the operator's ServiceAccount (its RBAC includes the
Lease Role). No worker processes are needed: the test watches the operator's own writes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_operators import API, lease_holder, operator_replicas
from e2ecluster import Kube

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    with operator_replicas(kube, namespace, tmp_path) as running:
        yield running


def _pods(kube: Kube, namespace: str, cluster: str) -> list[Any]:
    return kube.core.list_namespaced_pod(namespace, label_selector=f"legacygpu.io/cluster={cluster}").items


def test_one_replica_leads_and_the_other_takes_over(
    kube: Kube, namespace: str, replicas: dict[str, subprocess.Popen[bytes]]
) -> None:
    leader = kube.wait_for(lambda: lease_holder(kube, namespace), timeout=60, what="a lease holder")
    standby = "b" if leader == "a" else "a"
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "first"},
               "spec": {"replicas": 1, "gpusPerWorker": 0}}
    kube.apply(cluster, namespace)
    kube.wait_for(lambda: _pods(kube, namespace, "first"), timeout=60, what="the leader's worker pod")

    replicas[leader].terminate()  # a clean exit releases the lease
    replicas[leader].wait(timeout=30)
    kube.wait_for(lambda: lease_holder(kube, namespace) == standby, timeout=60, what="the standby takes the lease")
    second = {**cluster, "metadata": {"name": "second"}}
    kube.apply(second, namespace)
    kube.wait_for(lambda: _pods(kube, namespace, "second"), timeout=60, what="the new leader's worker pod")
    assert len(_pods(kube, namespace, "first")) == 1  # nothing was created twice
    lease = kube.get("coordination.k8s.io/v1", "Lease", "legacygpu-operator", namespace)
    assert lease["spec"]["leaseTransitions"] >= 1
