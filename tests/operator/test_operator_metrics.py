"""The operator's /metrics: the names the dashboards and alerts use, with values that follow the work done."""

from __future__ import annotations

from dataclasses import replace

import httpx
from operator_harness import FAST, Deployment, cluster_manifest, eventually, phase, task_manifest
from prometheus_client.parser import text_string_to_metric_families

from legacygpu.core.kube.contract import CLUSTER_PLURAL

FLAT = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_follow_the_work(dep: Deployment) -> None:
    handle = await dep.start_operator(replace(FAST, metrics_port=0, metrics_host="127.0.0.1"))
    assert handle.runtime is not None and handle.runtime.metrics.port
    port = handle.runtime.metrics.port
    await dep.create(cluster_manifest("c", replicas=1))
    for i in range(3):
        await dep.create(task_manifest(f"t{i}", "c", [FLAT]))
    await dep.create(task_manifest("bad", "c", [{**FLAT, "shape": [1, 3]}]))

    async def all_done() -> bool:
        phases = [phase(await dep.task(n)) for n in ("t0", "t1", "t2", "bad")]
        return all(p in ("Succeeded", "Failed") for p in phases)

    await eventually(all_done, what="tasks finished")

    def settled() -> dict | None:
        samples = scrape(port)
        key = ("legacygpu_operator_tasks", (("cluster", "c"), ("namespace", "default"), ("phase", "Succeeded")))
        return samples if samples.get(key) == 3 else None

    samples = await eventually(settled, what="tasks gauge shows 3 Succeeded")
    labels = (("cluster", "c"), ("namespace", "default"))
    assert samples[("legacygpu_operator_tasks", (*labels, ("phase", "Failed")))] == 1
    assert samples[("legacygpu_operator_queue_depth", labels)] == 0
    assert samples[("legacygpu_operator_workers", (*labels, ("state", "ready")))] == 1
    assert samples[("legacygpu_operator_task_assignment_seconds_count", ())] == 3
    refused = (("phase", "Failed"), ("reason", "InvalidInput"))
    assert samples[("legacygpu_operator_task_transitions_total", refused)] == 1
    assert samples[("legacygpu_operator_reconcile_duration_seconds_count", (("kind", "InferenceCluster"),))] > 0
    assert samples[("legacygpu_operator_leader", ())] == 1
    assert samples[("legacygpu_operator_reconcile_errors_total", (("kind", "InferenceCluster"),))] == 0

    await dep.api.delete("legacygpu.io", "v1alpha1", CLUSTER_PLURAL, "default", "c")

    def forgotten() -> bool:  # a deleted cluster leaves no series behind (they would be stale for good)
        return not any(dict(labels).get("cluster") == "c" for _, labels in scrape(port))

    await eventually(forgotten, what="the deleted cluster's series removed")
    assert handle.runtime.cluster_status.get(("default", "c")) is None


async def test_queue_depth_counts_waiting_tasks_and_refused_pods_count_as_errors(dep: Deployment) -> None:
    assert dep.emulator.emulator is not None
    dep.emulator.emulator.refuse_create = lambda plural, body: (
        (403, "Forbidden", "exceeded quota: gpu-quota") if plural == "pods" else None
    )
    handle = await dep.start_operator(replace(FAST, metrics_port=0, metrics_host="127.0.0.1"))
    assert handle.runtime is not None and handle.runtime.metrics.port
    port = handle.runtime.metrics.port
    labels = (("cluster", "held"), ("namespace", "default"))
    errors = ("legacygpu_operator_reconcile_errors_total", (("kind", "InferenceCluster"),))
    await dep.create(cluster_manifest("held", replicas=1, suspend=True))
    for i in range(3):
        await dep.create(task_manifest(f"q{i}", "held", [FLAT]))

    def queued() -> dict | None:
        samples = scrape(port)
        return samples if samples.get(("legacygpu_operator_tasks", (*labels, ("phase", "Queued")))) == 3 else None

    samples = await eventually(queued, what="3 tasks Queued on the suspended cluster")
    assert samples[("legacygpu_operator_queue_depth", labels)] == 3
    assert samples[errors] == 0  # suspended: no pod wanted, none refused

    await dep.patch_spec(CLUSTER_PLURAL, "held", {"suspend": False})
    samples = await eventually(lambda: (s := scrape(port)) and s[errors] >= 1 and s, what="a refused pod counted")
    assert samples[("legacygpu_operator_queue_depth", labels)] == 3  # nothing could be placed
    assert samples[("legacygpu_operator_workers", (*labels, ("state", "ready")))] == 0
