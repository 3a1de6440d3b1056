"""InferenceTask lifecycle with the real kopf operator and real worker loops over HTTP.

The API server and the nodes are stand-ins (see operator_harness); the
operator, the workers (TaskRunner + onnxruntime on the demo digits model)
and all their traffic are real.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    NS,
    Deployment,
    cluster_manifest,
    deployment,
    events_when,
    eventually,
    phase,
    task_manifest,
)

from legacygpu.core.kube.contract import CLUSTER_PLURAL, TASK_PLURAL, parse_time
from legacygpu.operator.app import quiet_event_handler_logs

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "kubernetes"
FINAL = ("Succeeded", "Failed", "Cancelled")


async def finished(dep: Deployment, *names: str, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    async def check() -> dict[str, dict[str, Any]] | None:
        bodies = {n: await dep.task(n) for n in names}
        return bodies if all(phase(b) in FINAL for b in bodies.values()) else None

    return await eventually(check, timeout=timeout, what=f"tasks {names} finished")  # type: ignore[no-any-return]


def top1(body: dict[str, Any]) -> str:
    return body["status"]["result"]["top_k"][0]["label"]  # type: ignore[no-any-return]


async def test_examples_run_end_to_end(dep: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await dep.start_operator()
    for name in ("cluster.yaml", "task-tensor.yaml", "task-image.yaml", "task-uri.yaml", "tasks-batch.yaml"):
        await dep.apply_file(EXAMPLES / name)
    batch = [f"digit-batch-{i}" for i in range(10)]
    bodies = await finished(dep, "digit-tensor", "digit-image", "digit-uri", *batch)
    assert {n: phase(b) for n, b in bodies.items()} == dict.fromkeys(bodies, "Succeeded")
    assert top1(bodies["digit-tensor"]) == "7" and top1(bodies["digit-image"]) == "7"
    assert top1(bodies["digit-uri"]) == "3"
    assert [top1(bodies[n]) for n in batch] == [str(i) for i in range(10)]

    status = bodies["digit-tensor"]["status"]
    assert status["reason"] == "Completed" and status["attempts"] == 1
    pods = {p["metadata"]["name"] for p in await dep.pods("digits")}
    assert status["workerRef"]["pod"] in pods and status["workerRef"]["node"].startswith("gpu-node-")
    assert "legacygpu.io/worker" not in (bodies["digit-tensor"]["metadata"].get("labels") or {})  # one write assigns
    times = [parse_time(status[k]) for k in ("queuedTime", "scheduledTime", "startTime", "completionTime")]
    assert times == sorted(times)
    assert status["latency"]["totalSeconds"] >= status["latency"]["runSeconds"] > 0
    outputs = {o["name"]: o for o in status["result"]["outputs"]}
    assert outputs["probabilities"]["shape"] == [1, 10] and outputs["label"]["data"] == [7]

    high = [parse_time(bodies[f"digit-batch-{i}"]["status"]["scheduledTime"]) for i in range(3)]
    low = [parse_time(bodies[f"digit-batch-{i}"]["status"]["scheduledTime"]) for i in range(3, 10)]
    assert max(high) <= max(low)  # priority 10 placed no later than the rest

    # Successes cost no Events: assignment and completion are in the status (three writes a task).
    assert [e for e in await dep.events() if e["involvedObject"].get("kind") == "InferenceTask"] == []

    async def counts_settled() -> bool:
        status = (await dep.cluster("digits"))["status"]
        return status["queuedTasks"] == 0 and status["runningTasks"] == 0

    await eventually(counts_settled, what="cluster status counts settle (written at most once a second)")

    # At the INFO level (the operator's default) the event handlers' successes log nothing (tasks have
    # no kopf handler at all: the operator watches them itself). kopf's other messages still get through.
    kopf_lines = [r.getMessage() for r in caplog.records if r.name == "kopf.objects"]
    assert not [m for m in kopf_lines if m.startswith("Handler '") and m.endswith("_event' succeeded.")]
    assert "reconcile loop started" in kopf_lines, kopf_lines


def test_only_the_event_handlers_successes_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    quiet_event_handler_logs()
    quiet_event_handler_logs()  # installed once however often the operator starts in a process
    objects = logging.getLogger("kopf.objects")
    assert sum(type(f).__name__ == "_EventHandlerSuccesses" for f in objects.filters) == 1
    caplog.set_level(logging.INFO)
    for message in ("Handler 'pod_event' succeeded.", "Handler 'cluster_event' succeeded.",
                    "Handler 'pod_event' failed with an exception.", "Handler 'finalize' succeeded."):
        objects.info(message)
    assert [r.getMessage() for r in caplog.records if r.name == "kopf.objects"] == [
        "Handler 'pod_event' failed with an exception.", "Handler 'finalize' succeeded.",
    ]


async def test_bad_tasks_fail_with_the_right_reason(demo_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(demo_repository, repository)
    shutil.copytree(repository / "digits", repository / "broken")
    (repository / "broken" / "card.yaml").write_text(
        (repository / "broken" / "card.yaml").read_text().replace("name: digits", "name: broken")
    )
    (repository / "broken" / "model.onnx").write_bytes(b"this is not an onnx file")
    flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    async with deployment(repository) as dep:
        await dep.start_operator()
        await dep.create(cluster_manifest("c", replicas=1))
        await dep.create(task_manifest("mismatch", "c", [{**flat, "shape": [1, 65]}]))
        await dep.create(task_manifest("wrong-input", "c", [{**flat, "name": "pixels"}]))
        await dep.create(task_manifest("no-such-model", "c", [flat], model="resnet"))
        await dep.create(task_manifest("broken-model", "c", [flat], model="broken"))
        await dep.create(task_manifest("no-configmap", "c", inputsUri="configmap://absent/inputs.json"))
        bodies = await finished(dep, "mismatch", "wrong-input", "no-such-model", "broken-model", "no-configmap")
    reasons = {n: (phase(b), b["status"]["reason"]) for n, b in bodies.items()}
    assert reasons == {
        "mismatch": ("Failed", "InvalidInput"),
        "wrong-input": ("Failed", "InvalidInput"),
        "no-such-model": ("Failed", "UnknownModel"),
        "broken-model": ("Failed", "ModelError"),
        "no-configmap": ("Failed", "InvalidInput"),
    }
    assert "needs 65 values but data has 64" in bodies["mismatch"]["status"]["message"]
    assert bodies["mismatch"]["status"].get("attempts", 0) == 0  # refused before any worker
    assert "has no input 'pixels'" in bodies["wrong-input"]["status"]["message"]
    assert "unknown model 'resnet'" in bodies["no-such-model"]["status"]["message"]
    loader = bodies["broken-model"]["status"]["message"]
    assert "broken" in loader and ("protobuf" in loader.lower() or "onnx" in loader.lower()), loader
    assert bodies["broken-model"]["status"]["attempts"] == 1  # a model error is not retried


async def test_task_for_a_missing_cluster_fails_but_a_late_cluster_is_waited_for(dep: Deployment) -> None:
    await dep.start_operator()
    flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    await dep.create(task_manifest("orphan", "nowhere", [flat]))
    await dep.create(task_manifest("early", "late", [flat]))
    await dep.create(cluster_manifest("late", replicas=1))
    bodies = await finished(dep, "orphan", "early")
    assert (phase(bodies["orphan"]), bodies["orphan"]["status"]["reason"]) == ("Failed", "ClusterNotFound")
    assert "'nowhere' does not exist" in bodies["orphan"]["status"]["message"]
    assert phase(bodies["early"]) == "Succeeded"
    await events_when(dep, "orphan", lambda evs: any(e["reason"] == "ClusterNotFound" for e in evs),
                      what="a ClusterNotFound Event")


async def test_cancel_deadline_and_ttl(dep: Deployment) -> None:
    await dep.start_operator()
    flat = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    await dep.create(cluster_manifest("paused", replicas=1, suspend=True))
    await dep.create(task_manifest("to-cancel", "paused", [flat]))
    await dep.create(task_manifest("too-slow", "paused", [flat], timeoutSeconds=1))
    await eventually(lambda: _phase_is(dep, "to-cancel", "Queued"), what="queued while suspended")
    await dep.patch_spec(TASK_PLURAL, "to-cancel", {"cancel": True})
    bodies = await finished(dep, "to-cancel", "too-slow")
    assert (phase(bodies["to-cancel"]), bodies["to-cancel"]["status"]["reason"]) == ("Cancelled", "Cancelled")
    assert (phase(bodies["too-slow"]), bodies["too-slow"]["status"]["reason"]) == ("Failed", "DeadlineExceeded")

    await dep.patch_spec(CLUSTER_PLURAL, "paused", {"suspend": False})
    await dep.create(task_manifest("short-lived", "paused", [flat], ttlSecondsAfterFinished=1))
    await finished(dep, "short-lived")

    async def deleted() -> bool:
        return await dep.task("short-lived") is None

    await eventually(deleted, timeout=15, what="finished task deleted after its TTL")
    for name in ("to-cancel", "too-slow"):
        body = await dep.task(name)
        assert body is not None and not body["metadata"].get("finalizers")  # no finalizer on tasks


async def _phase_is(dep: Deployment, name: str, wanted: str) -> bool:
    return phase(await dep.task(name)) == wanted


async def test_large_result_goes_to_a_configmap_owned_by_the_task(dep: Deployment) -> None:
    dep.worker_options = {"inline_limit": 200}
    await dep.start_operator()
    await dep.apply_file(EXAMPLES / "cluster.yaml")
    await dep.apply_file(EXAMPLES / "task-tensor.yaml")
    body = (await finished(dep, "digit-tensor"))["digit-tensor"]
    status = body["status"]
    assert phase(body) == "Succeeded" and status["resultRef"] == "configmap://digit-tensor-result/result.json"
    assert status["result"]["outputsOmitted"] is True and "top_k" not in status["result"]  # all fields moved
    configmap = await dep.api.get("", "v1", "configmaps", NS, "digit-tensor-result")
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    stored = json.loads(configmap["data"]["result.json"])
    assert stored["top_k"][0]["label"] == "7" and '"probabilities"' in configmap["data"]["result.json"]
    assert status["result"]["fields"] == sorted(stored)


async def test_a_worker_that_cannot_fetch_the_inputs_retries_then_fails_with_worker_error(dep: Deployment) -> None:
    import socket

    with socket.socket() as probe:  # nobody serves this port: the fetch fails outside the model and the input
        probe.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{probe.getsockname()[1]}/inputs.json"
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    await dep.create(task_manifest("unreachable", "c", inputsUri=unreachable, maxRetries=1))
    body = (await finished(dep, "unreachable"))["unreachable"]
    assert (phase(body), body["status"]["reason"], body["status"]["attempts"]) == ("Failed", "WorkerError", 2)
    assert "could not finish" in body["status"]["message"]
