"""The operator's read-your-writes overlay for pods, and reconcile passes that depend on what was written.

No API server here: a recording stand-in for :class:`KubeApi` takes the writes,
and the "index" is whatever list the test passes, so the test can make the
index lag behind the operator's own writes for as many passes as it likes
(under load in CI it lagged two passes, and a third pod was created).
"""

from __future__ import annotations

import logging
from typing import Any

from legacygpu.operator.clusterstate import PodView
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.pods import template_hash
from legacygpu.operator.reconciler import reconcile_cluster
from legacygpu.operator.runtime import OperatorRuntime

KEY = ("ns", "c")
PLACEHOLDER = PodView(name="", phase="Pending", created="2026-01-01T00:00:00Z")


class RecordingApi:
    """Takes the writes a reconcile pass makes and remembers the pods it created."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []

    async def ensure_service(self, body: dict[str, Any]) -> bool:
        return False

    async def create_pod(self, body: dict[str, Any]) -> None:
        self.created.append(body["metadata"]["name"])

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)

    async def patch_cluster_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        pass

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        """SubjectAccessReviews: every worker permission granted."""
        return {"status": {"allowed": True}}


def indexed(name: str, template_hash: str = "") -> PodView:
    """A pod as the index holds it once the API server has it (with a uid)."""
    return PodView(name=name, uid=f"uid-{name}", phase="Running", ready=True, node="n1", template_hash=template_hash)


def test_a_created_pod_stays_in_the_overlay_until_the_index_shows_it() -> None:
    rt = OperatorRuntime(config=OperatorConfig(), api=None)  # type: ignore[arg-type]
    rt.created_pod(KEY, "a")
    rt.created_pod(KEY, "b")
    merged = rt.pods_seen(KEY, [], PLACEHOLDER)
    assert sorted(p.name for p in merged) == ["a", "b"]
    # Merging the merged list again (our own placeholders) must not count as the index catching up.
    assert sorted(p.name for p in rt.pods_seen(KEY, merged, PLACEHOLDER)) == ["a", "b"]
    for _ in range(3):  # the index shows "a" only, pass after pass
        seen = rt.pods_seen(KEY, [indexed("a")], PLACEHOLDER)
        assert sorted(p.name for p in seen) == ["a", "b"]
        assert next(p for p in seen if p.name == "a").uid == "uid-a"
    assert [p.name for p in rt.pods_seen(KEY, [indexed("a"), indexed("b")], PLACEHOLDER)] == ["a", "b"]
    assert rt.created_pods[KEY] == {}


def test_a_deleted_pod_counts_as_leaving_until_the_index_drops_it() -> None:
    rt = OperatorRuntime(config=OperatorConfig(), api=None)  # type: ignore[arg-type]
    rt.deleted_pod(KEY, "a")
    seen = rt.pods_seen(KEY, [indexed("a"), indexed("b")], PLACEHOLDER)
    assert [(p.name, p.live) for p in seen] == [("a", False), ("b", True)]
    assert [p.name for p in rt.pods_seen(KEY, [indexed("b")], PLACEHOLDER)] == ["b"]
    assert rt.deleted_pods[KEY] == {}


async def test_passes_while_the_index_lags_create_each_worker_once() -> None:
    api = RecordingApi()
    rt = OperatorRuntime(config=OperatorConfig(namespaces=("ns",)), api=api)  # type: ignore[arg-type]
    body = {
        "apiVersion": "legacygpu.io/v1alpha1", "kind": "InferenceCluster",
        "metadata": {"namespace": "ns", "name": "c", "uid": "uid-c", "generation": 1},
        "spec": {"replicas": 2, "tasksPerWorker": 2, "backend": "onnxruntime"},
    }
    log = logging.getLogger("test")
    current = template_hash(cluster="c", namespace="ns", spec=body["spec"], config=rt.config)
    await reconcile_cluster(rt, body, tasks=[], pods=[], logger=log)
    assert len(api.created) == 2
    first, second = api.created
    for _ in range(4):  # the index has seen the first pod, not yet the second
        await reconcile_cluster(rt, body, tasks=[], pods=[indexed(first, current)], logger=log)
    await reconcile_cluster(rt, body, tasks=[], pods=[indexed(first, current), indexed(second, current)], logger=log)
    assert api.created == [first, second]
    assert api.deleted == []


async def test_a_background_task_that_fails_is_logged(caplog: Any) -> None:
    import asyncio

    rt = OperatorRuntime(config=OperatorConfig(), api=None)  # type: ignore[arg-type]

    async def broken() -> None:
        raise RuntimeError("the listing read broke")

    with caplog.at_level(logging.ERROR, logger="legacygpu.operator.runtime"):
        rt.spawn(broken())
        for _ in range(3):
            await asyncio.sleep(0)
    assert not rt.background
    ours = [r for r in caplog.records if r.name == "legacygpu.operator.runtime"]  # not asyncio's, at GC
    assert any("the listing read broke" in r.getMessage() for r in ours), caplog.records


class TaskWritingApi(RecordingApi):
    """Also takes task status writes: ``conflicts`` answer 409 (changed meanwhile), the rest are written."""

    def __init__(self, bodies: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.bodies = bodies
        self.conflicts: set[str] = set()
        self.writes: list[tuple[str, str | None, int | None]] = []  # (task, phase, attempts) per write tried

    async def patch_task_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        from legacygpu.core.kube.errors import ApiConflictError

        self.writes.append((name, status.get("phase"), status.get("attempts")))
        if name in self.conflicts:
            raise ApiConflictError("changed meanwhile", status=409)
        body = self.bodies[name]
        body["status"] = {**body["status"], **status}
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        return body


async def test_a_lost_pod_is_charged_only_once_its_other_tasks_went_back() -> None:
    # Were the head charged while a sibling's write failed, the next pass would find the sibling
    # the pod's head and charge it too: one lost pod, two attempts spent.
    from legacygpu.operator.taskstate import task_view

    def scheduled(name: str, priority: int) -> dict[str, Any]:
        return {
            "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}", "resourceVersion": "1",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"clusterRef": "c", "model": "digits", "priority": priority, "maxRetries": 3,
                     "inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}]},
            "status": {"phase": "Scheduled", "attempts": 0, "workerRef": {"pod": "lost"},
                       "scheduledTime": "2026-01-01T00:00:01Z"},
        }

    bodies = {"head": scheduled("head", 5), "sibling": scheduled("sibling", 0)}
    api = TaskWritingApi(bodies)
    api.conflicts.add("sibling")
    rt = OperatorRuntime(config=OperatorConfig(namespaces=("ns",), task_events=False), api=api)  # type: ignore[arg-type]
    body = {
        "apiVersion": "legacygpu.io/v1alpha1", "kind": "InferenceCluster",
        "metadata": {"namespace": "ns", "name": "c", "uid": "uid-c", "generation": 1},
        "spec": {"replicas": 0, "minReplicas": 0, "tasksPerWorker": 2, "backend": "onnxruntime"},
    }
    log = logging.getLogger("test")
    await reconcile_cluster(rt, body, tasks=[task_view(b) for b in bodies.values()], pods=[], logger=log)
    assert api.writes == [("sibling", "Queued", 0)]  # refused: the head's charge waits
    api.conflicts.clear()
    api.writes.clear()
    await reconcile_cluster(rt, body, tasks=[task_view(b) for b in bodies.values()], pods=[], logger=log)
    assert api.writes == [("sibling", "Queued", 0), ("head", "Queued", 1)]
    api.writes.clear()
    await reconcile_cluster(rt, body, tasks=[task_view(b) for b in bodies.values()], pods=[], logger=log)
    assert api.writes == []  # both back in the queue: nothing more is charged
