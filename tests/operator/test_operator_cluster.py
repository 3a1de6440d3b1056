"""InferenceCluster reconciliation with the real kopf operator over HTTP.

The API server and the nodes are stand-ins (no kube-apiserver or kubelet
runs on these machines; see operator_harness); the operator, its HTTP
traffic and the worker loops are real.
"""

from __future__ import annotations

from typing import Any

from operator_harness import (
    NS,
    Deployment,
    cluster_manifest,
    condition,
    events_when,
    eventually,
    phase,
    task_manifest,
)

from legacygpu.core.kube.contract import CLUSTER_PLURAL, TASK_PLURAL

FLAT = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
QUOTA = "exceeded quota: gpu-quota, requested: legacygpu.io/gpu=1, used: legacygpu.io/gpu=8, limited: ...=8"


async def _ready_workers(dep: Deployment, name: str, count: int) -> dict[str, Any] | None:
    body = await dep.cluster(name)
    status = (body or {}).get("status") or {}
    live = [p for p in await dep.pods(name) if not p["metadata"].get("deletionTimestamp")]
    if status.get("readyWorkers") == count and status.get("replicas") == count and len(live) == count:
        return body
    return None


async def test_create_scale_suspend_resume_delete(dep: Deployment) -> None:
    await dep.start_operator()
    created = await dep.create(cluster_manifest("pool", replicas=2))
    body = await eventually(lambda: _ready_workers(dep, "pool", 2), what="2 ready workers")
    status = body["status"]
    assert status["desiredWorkers"] == 2 and status["devices"] == 2
    assert condition(body, "Ready")["status"] == "True" and condition(body, "WorkersReady")["status"] == "True"
    assert condition(body, "Degraded")["status"] == "False" and condition(body, "Suspended")["status"] == "False"
    assert status["observedGeneration"] == 1 and status["selector"].startswith("legacygpu.io/cluster=pool")
    assert "legacygpu.io/operator" in body["metadata"]["finalizers"]
    pods = await dep.pods("pool")
    for pod in pods:
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("InferenceCluster", "pool", created["metadata"]["uid"])
        assert pod["spec"]["containers"][0]["resources"]["limits"]["legacygpu.io/gpu"] == "1"
    service = await dep.api.get("", "v1", "services", NS, "pool-workers")
    assert service["spec"]["clusterIP"] == "None"
    await events_when(dep, "pool", lambda evs: any(e["reason"] == "ServiceCreated" for e in evs),
                      what="a ServiceCreated Event")

    await dep.patch_spec(CLUSTER_PLURAL, "pool", {"replicas": 3})
    body = await eventually(lambda: _ready_workers(dep, "pool", 3), what="scaled up to 3")
    assert body["status"]["observedGeneration"] == 2
    before = {p["metadata"]["name"] for p in await dep.pods("pool")}

    await dep.patch_spec(CLUSTER_PLURAL, "pool", {"replicas": 1})
    await eventually(lambda: _ready_workers(dep, "pool", 1), what="scaled down to 1")
    after = {p["metadata"]["name"] for p in await dep.pods("pool")}
    assert after < before

    async def scaled() -> list[str]:
        messages = [e["message"] for e in await dep.events("pool") if e["reason"] == "Scaled"]
        return messages if len(messages) == 2 else []

    assert await eventually(scaled, what="two Scaled Events") == ["desired workers 2 -> 3", "desired workers 3 -> 1"]

    await dep.patch_spec(CLUSTER_PLURAL, "pool", {"suspend": True})

    async def suspended() -> Any:
        body = await dep.cluster("pool")
        return body if condition(body, "Suspended").get("status") == "True" and not await dep.pods("pool") else None

    body = await eventually(suspended, what="suspended with no pods")
    assert condition(body, "Ready")["reason"] == "Suspended" and body["status"]["desiredWorkers"] == 0

    await dep.patch_spec(CLUSTER_PLURAL, "pool", {"suspend": False})
    await eventually(lambda: _ready_workers(dep, "pool", 1), what="resumed")
    wanted = {"WorkerCreated", "WorkerDeleted", "Suspended", "Resumed"}
    await events_when(dep, "pool", lambda evs: wanted <= {e["reason"] for e in evs}, what=f"Events {wanted}")

    await dep.api.delete("legacygpu.io", "v1alpha1", CLUSTER_PLURAL, NS, "pool")

    async def gone() -> bool:
        return await dep.cluster("pool") is None and not await dep.pods("pool")

    await eventually(gone, what="cluster and pods gone (finalizer removed)")
    await events_when(dep, "pool", lambda evs: any(e["reason"] == "ClusterDeleted" for e in evs),
                      what="a ClusterDeleted Event")


async def test_unschedulable_worker_is_shown_with_the_scheduler_reason(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("big", replicas=1, gpusPerWorker=5))  # nodes have 4 GPUs each

    async def degraded() -> Any:
        body = await dep.cluster("big")
        return body if condition(body, "Degraded").get("reason") == "Unschedulable" else None

    body = await eventually(degraded, what="Degraded/Unschedulable")
    message = "0/2 nodes are available: 2 Insufficient legacygpu.io/gpu."
    assert message in condition(body, "Degraded")["message"]
    assert message in condition(body, "WorkersReady")["message"]
    assert condition(body, "Ready")["status"] == "False"

    async def warned() -> bool:  # kopf posts Events from a queue: the status can be written first
        return any(e["type"] == "Warning" and message in e["message"] for e in await dep.events("big"))

    await eventually(warned, what="a Warning Event with the scheduler's message")


async def test_failed_worker_is_replaced(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("heal", replicas=2))
    await eventually(lambda: _ready_workers(dep, "heal", 2), what="2 ready workers")
    victim = (await dep.pods("heal"))[0]["metadata"]["name"]
    await dep.kill_worker(victim)

    async def replaced() -> bool:
        names = {p["metadata"]["name"] for p in await dep.pods("heal")}
        return victim not in names and await _ready_workers(dep, "heal", 2) is not None

    await eventually(replaced, what="failed pod replaced")
    await events_when(dep, "heal", lambda evs: any(e["reason"] == "WorkerReplaced" for e in evs),
                      what="a WorkerReplaced Event")


async def test_spec_the_schema_would_refuse_is_refused_by_the_operator(dep: Deployment) -> None:
    """The emulator validates nothing, like an API server without the CRD's CEL rules."""
    await dep.start_operator()
    await dep.create(cluster_manifest("odd", replicas=10, maxReplicas=4))

    async def refused() -> Any:
        body = await dep.cluster("odd")
        return body if condition(body, "Ready").get("reason") == "InvalidSpec" else None

    body = await eventually(refused, what="Ready=False/InvalidSpec")
    assert "spec.replicas (10) is outside" in condition(body, "Ready")["message"]
    assert await dep.pods("odd") == []
    await events_when(dep, "odd", lambda evs: any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in evs),
                      what="a Warning InvalidSpec Event")


async def test_a_pod_the_api_server_refuses_degrades_the_cluster_and_tasks_still_move(dep: Deployment) -> None:
    """A 403 from a ResourceQuota: shown in the conditions and Events; cancel, deadlines and recovery still work."""
    assert dep.emulator.emulator is not None
    dep.emulator.emulator.refuse_create = lambda plural, body: (
        (403, "Forbidden", f'pods "{body["metadata"]["name"]}" is forbidden: {QUOTA}') if plural == "pods" else None
    )
    await dep.start_operator()
    await dep.create(cluster_manifest("capped", replicas=1))
    await dep.create(task_manifest("cancel-me", "capped", [FLAT]))
    await dep.create(task_manifest("too-late", "capped", [FLAT], timeoutSeconds=3))

    async def refused() -> Any:
        body = await dep.cluster("capped")
        return body if condition(body, "Degraded").get("reason") == "PodCreateFailed" else None

    body = await eventually(refused, what="Degraded/PodCreateFailed")
    degraded = condition(body, "Degraded")
    assert degraded["status"] == "True" and QUOTA in degraded["message"]
    assert 'pods "<generated>" is forbidden' in degraded["message"]  # stable from one attempt to the next
    assert condition(body, "WorkersReady")["status"] == "False" and condition(body, "Ready")["status"] == "False"
    posted = await events_when(dep, "capped", lambda evs: any(e["reason"] == "PodCreateFailed" for e in evs),
                               what="a PodCreateFailed Event")
    events = [e for e in posted if e["reason"] == "PodCreateFailed"]
    assert all(e["type"] == "Warning" and QUOTA in e["message"] for e in events)
    assert await dep.pods("capped") == []

    await dep.patch_spec(TASK_PLURAL, "cancel-me", {"cancel": True})

    async def ended() -> Any:
        bodies = {n: await dep.task(n) for n in ("cancel-me", "too-late")}
        return bodies if phase(bodies["cancel-me"]) == "Cancelled" and phase(bodies["too-late"]) == "Failed" else None

    bodies = await eventually(ended, what="one task cancelled, one past its deadline")
    assert bodies["too-late"]["status"]["reason"] == "DeadlineExceeded"

    dep.emulator.emulator.refuse_create = None  # the quota is raised
    body = await eventually(lambda: _ready_workers(dep, "capped", 1), what="worker created once allowed")
    assert condition(body, "Degraded")["status"] == "False"


async def test_an_api_server_that_does_not_answer_is_retried_not_reported_as_a_refusal(dep: Deployment) -> None:
    """A 503 on pod creation is an outage: the loop backs off and retries; it is not Degraded/PodCreateFailed."""
    assert dep.emulator.emulator is not None
    dep.emulator.emulator.refuse_create = lambda plural, body: (
        (503, "ServiceUnavailable", "etcd is unavailable") if plural == "pods" else None
    )
    handle = await dep.start_operator()
    assert handle.runtime is not None
    errors = handle.runtime.metrics.reconcile_errors.labels("InferenceCluster")
    await dep.create(cluster_manifest("flaky", replicas=1))
    await eventually(lambda: errors._value.get() >= 2, what="two passes failed on the 503")
    assert condition(await dep.cluster("flaky"), "Degraded").get("reason") != "PodCreateFailed"
    dep.emulator.emulator.refuse_create = None  # the API server answers again
    await eventually(lambda: _ready_workers(dep, "flaky", 1), timeout=60, what="worker created after the outage")
