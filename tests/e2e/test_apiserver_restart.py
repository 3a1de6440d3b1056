"""kube-apiserver restarted mid-run on the real control plane: every task still ends once.

Real: etcd, the API server, scheduler and garbage collector; two operator processes with leader
election, authenticated as the operator's ServiceAccount; one worker process per worker pod on a
model of some tens of milliseconds (:mod:`e2e_operators`). Simulated: only the kubelets.

With a few hundred tasks being assigned and run, the API server process is stopped, left down a
few seconds and started again on the same port; etcd keeps the data. Every client sees its watches
cut and its writes refused meanwhile: the operator's status writes, the workers' claims and
reports, the Lease renewals. Afterwards every task must end ``Succeeded`` after one attempt (a
result written once), the worker processes must be the same ones (they reconnected, nothing was
restarted), and a live operator replica must lead. A leader that could not renew its Lease within
the lease duration while the API server was away steps down and exits, as client-go's leader
election does (its pod restarts as a standby); the test accepts that exit and no other.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_operators import API, busy_operators, create_tasks, lease_holder, phases, tasks
from e2ecluster import Kube

TASKS = 300

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(
    simulated_kube: Kube, namespace: str, worker_command: Any, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    with busy_operators(simulated_kube, namespace, worker_command, tmp_path) as running:
        yield running


def _worker_pids(kube: Kube, namespace: str) -> dict[str, int | None]:
    pods = kube.core.list_namespaced_pod(namespace, label_selector="legacygpu.io/cluster=busy").items
    return {p.metadata.name: kube.worker_pid(namespace, p.metadata.name) for p in pods}


def test_an_api_server_restart_mid_run_loses_and_repeats_no_task(
    simulated_kube: Kube, namespace: str, replicas: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    kube = simulated_kube
    kube.wait_for(lambda: lease_holder(kube, namespace), timeout=90, what="a lease holder")
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "busy"},
               "spec": {"replicas": 4, "tasksPerWorker": 6, "backend": "onnxruntime", "models": ["busy"]}}
    kube.apply(cluster, namespace)
    kube.wait_condition(API, "InferenceCluster", "busy", "WorkersReady", namespace=namespace, timeout=180)
    workers = _worker_pids(kube, namespace)
    assert len(workers) == 4 and all(workers.values()), workers

    create_tasks(kube, namespace, TASKS)
    kube.wait_for(lambda: phases(kube, namespace)["Succeeded"] >= TASKS // 10, timeout=180,
                  what=f"{TASKS // 10} tasks done")
    down = kube.restart_apiserver(down_seconds=5.0)
    mid_run = phases(kube, namespace)
    assert mid_run["Succeeded"] < TASKS, "every task was done before the restart: the run is too small to test this"

    kube.wait_for(lambda: phases(kube, namespace)["Succeeded"] == TASKS, timeout=300,
                  what=f"all {TASKS} tasks Succeeded (phases: {phases(kube, namespace)})")
    finished = tasks(kube, namespace)
    assert len(finished) == TASKS
    attempts = Counter(t["status"].get("attempts") for t in finished)
    assert attempts == Counter({1: TASKS}), attempts  # no attempt was lost and run again
    for task in finished:
        assert task["status"]["result"]["model"] == "busy", task["metadata"]["name"]
    alive = {name for name, process in replicas.items() if process.poll() is None}
    for name in set(replicas) - alive:
        assert "lost the lease" in (tmp_path / f"{name}.log").read_text(), f"operator {name} crashed"
    assert alive, "no operator replica is left"
    kube.wait_for(lambda: lease_holder(kube, namespace) in alive, timeout=60, what="a live replica leads")
    assert _worker_pids(kube, namespace) == workers, "worker processes were restarted instead of reconnecting"
    sys.stdout.write(f"API server down {down:.1f}s with {dict(mid_run)} after the restart; "
                     f"replicas alive: {sorted(alive)}\n")
