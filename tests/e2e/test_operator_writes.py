"""Two API writes per successful short task besides its creation, counted by the real API server.

Real: the API server (whose own ``apiserver_request_total`` counters are read before and after,
:mod:`legacygpu.testing.apiwrites`), one operator process as the operator ServiceAccount, four worker
processes on the ``busy`` model (:mod:`e2e_operators`). Simulated: only the kubelets.

A hundred tasks are created at once on a cluster with fewer slots than tasks, so most of them wait
for a slot: waiting must not cost a write. The writes to InferenceTasks (status included, counted by
the API server) and the Events about them (counted from the Events), less the hundred creates, must be
two per task: the operator's
``Scheduled`` and the worker's ``Succeeded`` (which records the attempt's start). The worker writes a
``Running`` claim only for a task that runs longer than its claim delay (a ``busy`` task takes tens
of milliseconds), so the bound allows :data:`LONG_MARGIN` such writes in all, not one per task: a
worker claiming every task again, a label mirroring the assignment, a ``Queued`` write for each
waiting task or an Event per success would each break it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_operators import API, busy_operators, create_tasks, lease_holder, phases
from e2ecluster import Kube

from legacygpu.testing.apiwrites import parse_request_totals, per_task

TASKS = 100
LONG_MARGIN = 5
"""Claims allowed in all, for the rare task slowed past the claim delay on a loaded machine."""

pytestmark = pytest.mark.slow


@pytest.fixture
def operator(
    simulated_kube: Kube, namespace: str, worker_command: Any, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with busy_operators(simulated_kube, namespace, worker_command, tmp_path, names=["a"]) as running:
        yield running["a"]


def test_a_successful_task_costs_two_writes_besides_its_creation(
    simulated_kube: Kube, namespace: str, operator: subprocess.Popen[bytes]
) -> None:
    kube = simulated_kube
    kube.wait_for(lambda: lease_holder(kube, namespace), timeout=90, what="the operator leads")
    cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "busy"},
               "spec": {"replicas": 4, "tasksPerWorker": 4, "backend": "onnxruntime", "models": ["busy"]}}
    kube.apply(cluster, namespace)
    kube.wait_condition(API, "InferenceCluster", "busy", "WorkersReady", namespace=namespace, timeout=180)
    time.sleep(2)  # let the cluster's start-up writes (status, Events) land before counting

    before = parse_request_totals(kube.raw_get("/metrics"))
    create_tasks(kube, namespace, TASKS)
    kube.wait_for(lambda: phases(kube, namespace)["Succeeded"] == TASKS, timeout=300,
                  what=f"all {TASKS} tasks Succeeded (phases: {phases(kube, namespace)})")
    time.sleep(2)  # Events are posted asynchronously: let any stragglers arrive
    counted = per_task(before, parse_request_totals(kube.raw_get("/metrics")), TASKS)
    sys.stdout.write(f"API writes for {TASKS} tasks: {counted}\n")

    events = [e for e in kube.core.list_namespaced_event(namespace).items if e.involved_object.kind == "InferenceTask"]
    event_writes = sum(e.count or 1 for e in events)  # a repeated Event is one object whose count was patched
    assert counted["task_creates"] == TASKS, counted
    assert counted["task_writes_besides_create"] + event_writes <= 2 * TASKS + LONG_MARGIN, (counted, event_writes)
    assert counted["task_writes_besides_create"] >= 2 * TASKS, counted  # each one was assigned and reported
    assert events == [], [(e.involved_object.name, e.reason) for e in events]
