"""A new operator adopts every in-flight task, whatever state a killed one left it in.

The operator assigns a task in one write, ``status.workerRef.pod``, which the
worker's watch selects on (a field selector): an operator killed at any point
leaves a task either unassigned or assigned and visible to its worker. Labels
an older operator wrote (``legacygpu.io/worker``) no longer matter. These tests
build such states by hand while no operator runs (the emulated API server, see
operator_harness), then start one: the tasks must finish, each once, with no
Event for a success. The kill -9 of a real leader on the real API server is
tests/e2e/test_operator_failover.py.
"""

from __future__ import annotations

from typing import Any

from operator_harness import NS, Deployment, cluster_manifest, eventually, phase, task_manifest

from legacygpu.core.kube.contract import LABEL_WORKER, assigned_status, now_utc, queued_status

FLAT = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}


async def _ready_pod(dep: Deployment, cluster: str) -> str | None:
    body = await dep.cluster(cluster)
    if ((body or {}).get("status") or {}).get("readyWorkers") != 1:
        return None
    pods = await dep.pods(cluster)
    return pods[0]["metadata"]["name"] if len(pods) == 1 else None


async def _finished(dep: Deployment, name: str) -> dict[str, Any] | None:
    body = await dep.task(name)
    return body if phase(body) in ("Succeeded", "Failed") else None


async def test_a_new_operator_adopts_tasks_a_killed_one_left_assigned(dep: Deployment) -> None:
    first = await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, tasksPerWorker=4))
    pod = await eventually(lambda: _ready_pod(dep, "c"), what="one ready worker")
    await first.close()  # from here on, the state a killed operator could leave behind
    now = now_utc()
    cases = {
        "assigned": None,  # killed right after its status write
        "stale-label": f"{pod}-gone",  # a label an older operator left from an earlier assignment
        "queued-labelled": pod,  # requeued, an old label never removed
    }
    for name, label in cases.items():
        manifest = task_manifest(name, "c", [FLAT])
        if label is not None:
            manifest["metadata"]["labels"] = {LABEL_WORKER: label}
        await dep.create(manifest)
        status = dict(queued_status({}, now, "queued for cluster c"))
        if name != "queued-labelled":
            status.update(assigned_status(status, pod=pod, node=None, now=now))
        await dep.api.patch_task_status(NS, name, status)

    await dep.start_operator()
    bodies = {n: await eventually(lambda n=n: _finished(dep, n), what=f"{n} finished") for n in cases}
    for name, body in bodies.items():
        assert phase(body) == "Succeeded", (name, body["status"])
        assert body["status"]["attempts"] == 1, (name, body["status"])
        assert body["status"]["workerRef"]["pod"] == pod
    about_tasks = [e for e in await dep.events() if e["involvedObject"].get("kind") == "InferenceTask"]
    assert about_tasks == [], about_tasks  # successes are in the status, not in Events
