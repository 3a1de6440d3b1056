"""Finding the workers that serve ``/v2``: registered workers (local) and Ready worker pods (Kubernetes).

The pure rules of :func:`pod_endpoint` on pod bodies shaped as the API server returns them, and
then the facade's one forwarding implementation driven by pod discovery: a real worker server
(onnxruntime, the demo digits model) on loopback behind one Ready pod, a dead address behind
another. No API server here: the pods are plain dicts (the e2e tier,
tests/e2e/test_serving_kubernetes.py, has the real one and the real backend).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from legacygpu.api.discovery import ServingEndpoint, pod_endpoint, registered_endpoints, serving_endpoints
from legacygpu.api.forwarding import Forwarder, NoWorker
from legacygpu.api.schemas import DeviceInfoPublic, WorkerPublic
from legacygpu.core.kube.contract import now_utc
from legacygpu.core.modelcards import ModelRepository
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.pods import build_worker_pod
from legacygpu.worker.backends import create_backend
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingEngine, ServingServer


def _pod(name: str, ip: str | None = "10.0.0.7", *, ready: bool = True, phase: str = "Running",
         models: list[str] | None = None, port: int = 8000, **meta: Any) -> dict[str, Any]:
    """A worker pod as the operator builds it, with a kubelet-like status."""
    pod = build_worker_pod(cluster="c", namespace="ns", name=name, spec={"gpusPerWorker": 0}, config=OperatorConfig())
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = port
    pod["metadata"].update(meta)
    if models is not None:
        pod["metadata"]["annotations"]["legacygpu.io/worker-stats"] = json.dumps({"models": models, "completed": 0})
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    pod["status"] = {"phase": phase, "conditions": conditions, **({"podIP": ip} if ip else {})}
    return pod


def test_a_ready_pod_is_its_ip_and_its_named_port() -> None:
    endpoint = pod_endpoint(_pod("w1", models=["digits"]), ["other"])
    assert endpoint == ServingEndpoint("w1", "http://10.0.0.7:8000", frozenset({"digits"}), "10.0.0.7:8001")
    moved = pod_endpoint(_pod("w2", "fd00::5", port=18000), ["digits"])
    assert moved is not None and moved.url == "http://[fd00::5]:18000"
    assert moved.models == frozenset({"digits"}), "no stats yet: the cluster's spec.models"


@pytest.mark.parametrize("pod", [
    _pod("not-ready", ready=False),
    _pod("pending", phase="Pending"),
    _pod("no-ip", None),
    _pod("deleting", deletionTimestamp="2026-12-07T00:00:00Z"),
    _pod("drained", annotations={"legacygpu.io/drain": "true"}),
], ids=lambda p: p["metadata"]["name"])
def test_pods_that_must_get_no_requests(pod: dict[str, Any]) -> None:
    assert pod_endpoint(pod) is None


def test_local_workers_are_found_from_registration() -> None:
    def worker(name: str, state: str, stats: dict[str, Any]) -> WorkerPublic:
        now = now_utc()
        return WorkerPublic(id=name, name=name, host="h", pid=1, state=state,
                            device=DeviceInfoPublic(name="cpu", type="cpu", backend="onnxruntime", vram_mib=0),
                            concurrency=1, assigned=0, registered_at=now, last_heartbeat=now, tasks_succeeded=0,
                            tasks_failed=0, stats=stats)

    serving = {"serving": {"rest": "http://127.0.0.1:9/", "grpc": "127.0.0.1:10"}, "models_loaded": ["digits"]}
    found = registered_endpoints([worker("a", "active", serving), worker("b", "draining", serving),
                                  worker("c", "active", {})])
    assert found == [ServingEndpoint("a", "http://127.0.0.1:9", frozenset({"digits"}), "127.0.0.1:10")]


class _PodBackend:
    """Stands in for the Kubernetes backend's pod cache (the real one is in the e2e test)."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods

    async def serving_endpoints(self) -> list[ServingEndpoint]:
        return [e for e in (pod_endpoint(p, ["digits"]) for p in self.pods) if e is not None]

    async def list_workers(self) -> list[WorkerPublic]:
        raise AssertionError("a backend with its own discovery is not asked for registered workers")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_forwarder_sends_to_ready_pods_and_retries_a_dead_one_on_another(worker: ServingServer) -> None:
    live_port = int(worker.endpoints["rest"].rsplit(":", 1)[1])
    # The dead pod reports digits loaded and the live one not, so the dead one is preferred and tried first.
    pods = [_pod("a-dead", "127.0.0.1", port=_dead_port(), models=["digits"]),
            _pod("b-live", "127.0.0.1", port=live_port, models=["other"]),
            _pod("c-unready", "127.0.0.1", port=live_port, ready=False)]
    backend = _PodBackend(pods)
    assert [e.name for e in await serving_endpoints(backend)] == ["a-dead", "b-live"]  # type: ignore[arg-type]
    forwarder = Forwarder(backend, CollectorRegistry(), refresh_seconds=60.0)  # type: ignore[arg-type]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
    try:
        answers = [await forwarder.forward("POST", "/v2/models/digits/infer", model="digits",
                                           content=body.encode(), headers={"content-type": "application/json"})
                   for _ in range(4)]
    finally:
        await forwarder.close()
    assert {a.status_code for a in answers} == {200}
    assert {a.worker for a in answers} == {"b-live"}
    assert json.loads(answers[0].content)["model_name"] == "digits"
    retried = forwarder.retries.labels("digits")._value.get()
    assert retried == 1, "the dead pod was tried once, then skipped until the next refresh"


async def test_a_worker_that_failed_lately_still_gets_requests_when_it_is_the_only_one(demo_repository: Path) -> None:
    """A pod whose process restarted (the other pod gone) serves again before the forwarder's next refresh."""
    port = _dead_port()
    backend = _PodBackend([_pod("a", "127.0.0.1", port=port, models=["digits"])])
    forwarder = Forwarder(backend, CollectorRegistry(), refresh_seconds=60.0)  # type: ignore[arg-type]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})

    async def infer() -> Any:
        return await forwarder.forward("POST", "/v2/models/digits/infer", model="digits", content=body.encode(),
                                       headers={"content-type": "application/json"})

    runner = TaskRunner(ModelRepository(demo_repository), create_backend("onnxruntime"))
    server = ServingServer(ServingEngine(runner, server_version="test"), http_port=port, grpc_port=None)
    try:
        with pytest.raises(NoWorker):  # nothing listens yet: the pod is marked failed
            await infer()
        server.start()  # the process is back, on the same address, within the refresh period
        answer = await infer()
    finally:
        server.stop()
        await forwarder.close()
    assert answer.status_code == 200 and json.loads(answer.content)["model_name"] == "digits"
