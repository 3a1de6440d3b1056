"""The API server's floor (:mod:`legacygpu.testing.apifloor`) makes exactly the platform's API traffic.

Real: the API server, which counts the writes itself (``apiserver_request_total``); the floor's
client authenticates as the benchmark's admin, the operator's and the workers' ServiceAccounts, so
RBAC is exercised as in the platform. The floor is only evidence if it does what the platform does
per task: one create and two status writes (assignment, and the report that carries the attempt's
start, as a worker writes it for a short task) and nothing more, or three with ``claim=True`` (the
claim a long task costs), every
task ending ``Succeeded`` on its worker with its result, and every watch fed every event it is
owed. A driver that skipped a write, wrote a status the API server refused, put a task on the wrong
worker or stopped before the watches had their events would fail here.
"""

from __future__ import annotations

import asyncio

import pytest
from e2ecluster import Kube

from legacygpu.core.kube.contract import GROUP, TASK_PLURAL, VERSION
from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.rbac import rbac_manifests
from legacygpu.testing.apifloor import FloorClients, drive_floor
from legacygpu.testing.apiwrites import parse_request_totals, per_task

TASKS, WORKERS = 12, 3


@pytest.mark.parametrize("claim", [False, True], ids=["short-tasks", "claimed"])
def test_the_floor_makes_the_platforms_writes_and_feeds_every_watch(
    simulated_kube: Kube, namespace: str, claim: bool
) -> None:
    kube = simulated_kube
    assert kube.cluster is not None
    kube.apply(all_crds())
    kube.apply(rbac_manifests(namespace=namespace))
    pki = kube.cluster.pki
    clients = FloorClients(
        server=kube.server, ca_file=str(pki.ca_cert), admin_cert=(str(pki.cert("admin")), str(pki.key("admin"))),
        operator_token=kube.token(namespace, "legacygpu-operator"),
        worker_token=kube.token(namespace, "legacygpu-worker"),
    )  # fmt: skip
    inputs = [[{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [i, i + 0.5]}] for i in range(TASKS)]
    results = [{"model": "digits", "top_k": [{"label": str(i % 10), "score": 0.9}]} for i in range(TASKS)]

    before = parse_request_totals(kube.raw_get("/metrics"))
    run = asyncio.run(drive_floor(clients, namespace=namespace, inputs=inputs, results=results, workers=WORKERS,
                                  lanes=4, claim=claim))  # fmt: skip
    counted = per_task(before, parse_request_totals(kube.raw_get("/metrics")), TASKS)

    assert run.failures == []
    writes = 3 if claim else 2
    assert run.watch_complete and (run.operator_events, run.worker_events) == ((1 + writes) * TASKS, writes * TASKS)
    assert counted["task_creates"] == TASKS and counted["task_writes_besides_create"] == writes * TASKS, counted
    assert counted["by_verb"].get("inferencetasks/status PATCH") == writes * TASKS, counted
    items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TASK_PLURAL)["items"]
    assert len(items) == TASKS
    for task in items:
        index = int(task["metadata"]["name"].rsplit("-", 1)[1])
        status = task["status"]
        assert status["phase"] == "Succeeded" and status["attempts"] == 1
        assert status["workerRef"]["pod"] == f"floor-worker-{index % WORKERS}"
        assert status["result"] == results[index]
        assert [(h["attempt"], h["outcome"]) for h in status["history"]] == [(1, "Completed")]
        assert status["startTime"] == status["history"][0]["startTime"]
        assert task["spec"]["inputs"] == inputs[index]
    assert run.elapsed > 0
