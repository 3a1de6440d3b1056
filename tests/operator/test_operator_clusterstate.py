"""Cluster decisions (scale plan, status, conditions) and the worker pod and Service manifests."""

from __future__ import annotations

import datetime
import json
from typing import Any

from legacygpu.core.kube.contract import ANNOTATION_WORKER_STATS
from legacygpu.operator.clusterstate import cluster_status, desired_workers, plan_scale, pod_view, worker_infos
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.pods import build_service, build_worker_pod, new_pod_name

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def pod(name: str, *, ready: bool = True, node: str | None = "n1", created: str = "2026-01-01T00:00:00Z",
        phase: str = "Running", **extra: Any) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    body: dict[str, Any] = {
        "metadata": {"name": name, "creationTimestamp": created, **extra.get("meta", {})},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions + extra.get("conditions", [])},
    }
    return body


def test_desired_workers() -> None:
    assert desired_workers({"replicas": 3, "minReplicas": 0, "maxReplicas": 8}) == 3
    assert desired_workers({"replicas": 3, "suspend": True}) == 0
    assert desired_workers({"replicas": 9, "minReplicas": 0, "maxReplicas": 4}) == 4


def test_scale_down_removes_unscheduled_then_unready_then_idle_then_newest() -> None:
    pods = [
        pod_view(pod("busy", created="2026-01-01T00:00:05Z")),
        pod_view(pod("idle-old", created="2026-01-01T00:00:01Z")),
        pod_view(pod("idle-new", created="2026-01-01T00:00:09Z")),
        pod_view(pod("unready", ready=False)),
        pod_view(pod("pending", ready=False, node=None)),
    ]
    assigned = {"busy": 2}
    assert plan_scale(3, pods, assigned).delete == ("pending", "unready")
    assert plan_scale(2, pods, assigned).delete == ("pending", "unready", "idle-new")
    assert plan_scale(1, pods, assigned).delete == ("pending", "unready", "idle-new", "idle-old")
    assert plan_scale(7, pods, assigned).create == 2


def test_failed_pods_are_replaced() -> None:
    pods = [pod_view(pod("ok")), pod_view(pod("dead", phase="Failed", ready=False))]
    plan = plan_scale(2, pods, {})
    assert plan.delete == ("dead",) and plan.replaced == ("dead",) and plan.create == 1


def _status(spec: dict[str, Any], pods: list[dict[str, Any]], previous: Any = None) -> dict[str, Any]:
    return cluster_status(
        spec=spec, generation=4, pods=[pod_view(p) for p in pods], assigned={}, queued=3, running=1,
        previous_conditions=previous, selector="legacygpu.io/cluster=c", now=NOW,
    )


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_unschedulable_worker_shows_the_scheduler_reason() -> None:
    message = "0/3 nodes are available: 3 Insufficient legacygpu.io/gpu."
    stuck = pod("w2", ready=False, node=None, phase="Pending",
                conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}])
    status = _status({"replicas": 2, "gpusPerWorker": 1}, [pod("w1"), stuck])
    assert (status["readyWorkers"], status["desiredWorkers"], status["devices"]) == (1, 2, 1)
    degraded = _cond(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable" and message in degraded["message"]
    assert _cond(status, "WorkersReady")["reason"] == "Unschedulable"
    assert _cond(status, "Ready")["status"] == "True"
    assert status["observedGeneration"] == 4 and all(c["observedGeneration"] == 4 for c in status["conditions"])


def test_crash_looping_worker_is_degraded() -> None:
    looping = pod("w1", ready=False)
    looping["status"]["containerStatuses"] = [
        {"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting"}}}
    ]
    degraded = _cond(_status({"replicas": 1}, [looping]), "Degraded")
    assert degraded["reason"] == "ContainerWaiting" and "CrashLoopBackOff" in degraded["message"]


def test_suspended_cluster_conditions_and_stable_transition_times() -> None:
    status = _status({"replicas": 2, "suspend": True}, [])
    assert _cond(status, "Suspended")["status"] == "True" and _cond(status, "Ready")["reason"] == "Suspended"
    assert status["desiredWorkers"] == 0 and _cond(status, "WorkersReady")["status"] == "True"
    earlier = [{**c, "lastTransitionTime": "2025-12-31T00:00:00.000000Z"} for c in status["conditions"]]
    again = _status({"replicas": 2, "suspend": True}, [], previous=earlier)
    assert all(c["lastTransitionTime"] == "2025-12-31T00:00:00.000000Z" for c in again["conditions"])


def test_worker_infos_read_the_published_stats() -> None:
    stats = {"vramMiB": 8192, "gpuFamily": "polaris", "recentLatencyMs": 12.5, "completed": 4}
    annotated = pod("w1", meta={"annotations": {ANNOTATION_WORKER_STATS: json.dumps(stats)}})
    infos = worker_infos([pod_view(annotated), pod_view(pod("w2", ready=False))], {"w1": 1}, capacity=3)
    assert len(infos) == 1
    info = infos[0]
    assert (info.id, info.assigned, info.capacity, info.vram_mib, info.gpu_family) == ("w1", 1, 3, 8192, "polaris")
    assert info.recent_latency_ms == 12.5


def test_worker_pod_manifest() -> None:
    spec = {"backend": "opencl", "gpusPerWorker": 2, "deviceResource": "amd.com/gpu", "models": ["digits"],
            "modelVolume": {"persistentVolumeClaim": {"claimName": "models"}},
            "resources": {"limits": {"memory": "2Gi"}},
            "template": {"metadata": {"labels": {"team": "ml"}},
                         "spec": {"priorityClassName": "high",
                                  "containers": [{"name": "worker", "env": [{"name": "X", "value": "1"}]}]}}}
    config = OperatorConfig(worker_image="registry.local/worker:1", health_port=9000)
    manifest = build_worker_pod(cluster="c", namespace="ns", name="c-worker-abcde", spec=spec, config=config)
    container = manifest["spec"]["containers"][0]
    assert container["command"] == ["legacygpu", "worker", "start", "--kubernetes", "--backend", "opencl"]
    assert container["image"] == "registry.local/worker:1"
    assert container["resources"]["limits"] == {"memory": "2Gi", "amd.com/gpu": "2"}
    assert container["resources"]["requests"] == {"amd.com/gpu": "2"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["LEGACYGPU_PRELOAD_MODELS"]["value"] == "digits" and env["X"]["value"] == "1"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 9000, "http-v2": 8000,
                                                                           "grpc-v2": 8001}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifest["spec"]["securityContext"]["runAsNonRoot"] is True
    terms = manifest["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "legacygpu.io/gpu.present"
    assert manifest["spec"]["priorityClassName"] == "high" and manifest["metadata"]["labels"]["team"] == "ml"
    assert manifest["metadata"]["labels"]["legacygpu.io/cluster"] == "c"
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models"}} in manifest["spec"]["volumes"]


def test_cpu_workers_and_custom_affinity() -> None:
    cpu = build_worker_pod(cluster="c", namespace="ns", name="p", spec={"gpusPerWorker": 0}, config=OperatorConfig())
    assert "affinity" not in cpu["spec"] and "legacygpu.io/gpu" not in str(cpu["spec"]["containers"][0]["resources"])
    own = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    custom = build_worker_pod(cluster="c", namespace="ns", name="p", spec={"affinity": own}, config=OperatorConfig())
    assert custom["spec"]["affinity"] == own


def test_worker_pods_serve_the_open_inference_protocol_and_are_probed_there() -> None:
    """Triton's ports, named; liveness, startup and readiness on the protocol's own health endpoints."""
    pod = build_worker_pod(cluster="c", namespace="ns", name="p", spec={}, config=OperatorConfig())
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports["http-v2"] == (8000, "TCP") and ports["grpc-v2"] == (8001, "TCP")
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live"),
                        ("startupProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http-v2"}, probe
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["LEGACYGPU_SERVING_PORT"], env["LEGACYGPU_GRPC_PORT"]) == ("8000", "8001")
    # A probe's named port must resolve to one of the container's ports (the kubelet refuses the pod otherwise).
    assert all(container[p]["httpGet"]["port"] in ports for p in ("readinessProbe", "livenessProbe", "startupProbe"))


def test_headless_service_and_pod_names() -> None:
    service = build_service(cluster="c", namespace="ns", health_port=8081)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"]["legacygpu.io/cluster"] == "c"
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("http-v2", 8000, "http-v2"), ("grpc-v2", 8001, "grpc-v2"), ("health", 8081, "health")}
    names = {new_pod_name("a" * 70) for _ in range(20)}
    assert len(names) == 20 and all(len(n) <= 63 for n in names)
