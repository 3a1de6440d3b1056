"""kill -9 of the leading operator mid-run on the real control plane: no task is lost, stuck or run twice.

Real: the API server, scheduler and garbage collector; two operator processes with leader
election, authenticated as the operator's ServiceAccount; one worker process per worker pod
(``legacygpu worker start --kubernetes`` on a small ONNX model of some tens of milliseconds, run
by the node simulator with the pod's own ServiceAccount token). Simulated: only the kubelets.

The leader is SIGKILLed while 500 tasks (the issue's number) are being assigned and run, so it
may die between any two of its writes. While no replica leads (the standby waits for the dead leader's
Lease to expire), the test also assigns five waiting tasks to a worker in their status, as a
leader killed right after its assignment write leaves them (the worker's field selector on
``status.workerRef.pod`` sees them at once; older operators also wrote a label, which a killed
leader could leave missing). The new leader must adopt everything: every task ends ``Succeeded``
after one attempt, with no Event for a success and none about a retry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_operators import API, GROUP, PLURAL, VERSION, busy_operators, create_tasks, lease_holder
from e2e_operators import phases as _phases
from e2e_operators import tasks as _tasks
from e2ecluster import Kube

from legacygpu.core.kube.contract import assigned_status, now_utc, queued_status

TASKS = 500

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(
    simulated_kube: Kube, namespace: str, worker_command: Any, tmp_path: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    with busy_operators(simulated_kube, namespace, worker_command, tmp_path) as running:
        yield running


def _half_assign(kube: Kube, namespace: str, count: int) -> list[str]:
    """Assign up to ``count`` waiting tasks to a ready worker, as a leader's one assignment write does.

    Exactly what a leader killed right after its assignment leaves behind; written by the test
    while no replica leads, so it is certain to happen.
    """
    pods = kube.core.list_namespaced_pod(namespace, label_selector="legacygpu.io/cluster=busy").items
    ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ())]
    assert ready, "no ready worker pod"
    pod = ready[0]
    done = []
    for task in _tasks(kube, namespace):
        status = task.get("status") or {}
        if len(done) == count:
            break
        if status.get("phase", "Pending") not in ("Pending", "Queued") or status.get("retryAfter"):
            continue
        if status.get("phase", "Pending") == "Pending":  # admitted and assigned in one write, as the operator does
            status = {**status, **queued_status(status, now_utc())}
        assigned = {**status, **assigned_status(status, pod=pod.metadata.name, node=pod.spec.node_name, now=now_utc())}
        patch = {"metadata": {"resourceVersion": task["metadata"]["resourceVersion"]}, "status": assigned}
        try:
            kube.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL,
                                                              task["metadata"]["name"], patch)
        except Exception:  # 409: it moved meanwhile; take another
            continue
        done.append(task["metadata"]["name"])
    return done


def test_kill_9_of_the_leader_mid_run_loses_and_repeats_no_task(
    simulated_kube: Kube, namespace: str, replicas: dict[str, subprocess.Popen[bytes]]
) -> None:
    kube = simulated_kube
    leader = kube.wait_for(lambda: lease_holder(kube, namespace), timeout=90, what="a lease holder")
    standby = "b" if leader == "a" else "a"
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "busy"},
               "spec": {"replicas": 4, "tasksPerWorker": 6, "backend": "onnxruntime", "models": ["busy"]}}
    kube.apply(cluster, namespace)
    kube.wait_condition(API, "InferenceCluster", "busy", "WorkersReady", namespace=namespace, timeout=180)

    create_tasks(kube, namespace, TASKS)
    kube.wait_for(lambda: _phases(kube, namespace)["Succeeded"] >= TASKS // 10, timeout=180,
                  what=f"{TASKS // 10} tasks done")
    os.kill(replicas[leader].pid, signal.SIGKILL)  # no cleanup: the Lease stays held until it expires
    replicas[leader].wait(timeout=10)
    killed_at = time.monotonic()
    half = _half_assign(kube, namespace, 5)
    mid_run = _phases(kube, namespace)
    assert mid_run["Succeeded"] < TASKS, "every task was done before the kill: the run is too small to test this"
    assert len(half) == 5, f"could not assign 5 waiting tasks ({dict(mid_run)}): the test proves nothing"

    kube.wait_for(lambda: lease_holder(kube, namespace) == standby, timeout=90, what="the standby takes the lease")
    kube.wait_for(lambda: _phases(kube, namespace)["Succeeded"] == TASKS, timeout=420,
                  what=f"all {TASKS} tasks Succeeded (phases: {_phases(kube, namespace)}, half-assigned {half})")
    tasks = _tasks(kube, namespace)
    assert len(tasks) == TASKS
    attempts = Counter(t["status"].get("attempts") for t in tasks)
    assert attempts == Counter({1: TASKS}), attempts
    events = kube.core.list_namespaced_event(namespace).items
    about_tasks = Counter(e.reason for e in events if e.involved_object.kind == "InferenceTask")
    assert about_tasks == Counter(), about_tasks  # no success Event, no retry, no second report
    sys.stdout.write(f"killed {leader} with {dict(mid_run)}; half-assigned {half}; "
                     f"all done {time.monotonic() - killed_at:.1f}s after the kill\n")
