"""A changed pod template rolls the worker pods (pure planning, then the whole operator on the emulator)."""

from __future__ import annotations

from typing import Any

from operator_harness import Deployment, cluster_manifest, eventually

from legacygpu.operator.clusterstate import PodView, plan_scale
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.pods import LABEL_TEMPLATE_HASH, build_worker_pod, template_hash


def _pod(name: str, hash_: str, *, ready: bool = True, created: str = "2026-01-01T00:00:00Z") -> PodView:
    return PodView(name=name, uid=name, phase="Running", ready=ready, node="n", created=created, template_hash=hash_)


def test_the_hash_follows_what_the_pod_is_built_from_and_nothing_else() -> None:
    config = OperatorConfig(worker_image="img:1", worker_service_account="w")
    base = {"replicas": 2, "backend": "onnxruntime"}

    def h(spec: dict[str, Any], cfg: OperatorConfig = config) -> str:
        return template_hash(cluster="c", namespace="ns", spec=spec, config=cfg)

    assert h(base) == h({**base, "replicas": 5, "suspend": False, "tasksPerWorker": 9})  # not the pod's business
    pod = build_worker_pod(cluster="c", namespace="ns", name="c-worker-abcde", spec=base, config=config)
    assert pod["metadata"]["labels"][LABEL_TEMPLATE_HASH] == h(base)  # a pod's own name is not in it
    changed = [
        {**base, "image": "img:2"},
        {**base, "serviceAccountName": "other"},
        {**base, "resources": {"limits": {"memory": "1Gi"}}},
        {**base, "template": {"metadata": {"labels": {"team": "a"}}}},
    ]
    hashes = {h(spec) for spec in changed} | {h(base, OperatorConfig(worker_image="img:9", worker_service_account="w"))}
    assert len(hashes) == 5 and h(base) not in hashes


def test_outdated_ready_pods_roll_one_at_a_time_and_unready_ones_at_once() -> None:
    new = "new"
    pods = [_pod("a", "old"), _pod("b", "old"), _pod("c", "old")]
    plan = plan_scale(3, pods, {"a": 2, "b": 0, "c": 1}, new)
    assert plan.delete == ("b",) and plan.rolled == ("b",) and plan.create == 1  # the idle one first

    starting = [_pod("a", "old"), _pod("c", "old"), _pod("n1", new, ready=False)]
    assert plan_scale(3, starting, {}, new).delete == ()  # wait until the new pod is ready

    stuck = [_pod("a", "old", ready=False), _pod("b", "old", ready=False), _pod("n1", new, ready=False)]
    plan = plan_scale(3, stuck, {}, new)
    assert set(plan.delete) == {"a", "b"} and plan.create == 2  # they serve nothing: replace at once

    current = [_pod("a", new), _pod("b", new)]
    assert plan_scale(2, current, {}, new) == plan_scale(2, current, {})  # nothing to roll


def test_scale_down_removes_outdated_pods_first() -> None:
    pods = [_pod("a", "new"), _pod("b", "old"), _pod("c", "new")]
    assert plan_scale(2, pods, {"b": 3}, "new").delete == ("b",)


async def _pods(dep: Deployment, image: str) -> list[str] | None:
    pods = [p for p in await dep.pods("c") if not p["metadata"].get("deletionTimestamp")]
    images = {p["spec"]["containers"][0]["image"] for p in pods}
    ready = (((await dep.cluster("c")) or {}).get("status") or {}).get("readyWorkers")
    return sorted(p["metadata"]["name"] for p in pods) if images == {image} and len(pods) == 2 and ready == 2 else None


async def test_changing_the_image_replaces_every_worker_pod(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, image="legacygpu/worker:a"))
    before = await eventually(lambda: _pods(dep, "legacygpu/worker:a"), what="2 ready workers on image a")
    await dep.patch_spec("inferenceclusters", "c", {"image": "legacygpu/worker:b"})
    after = await eventually(lambda: _pods(dep, "legacygpu/worker:b"), timeout=60, what="2 ready workers on image b")
    assert not set(before) & set(after)
    rolled = [e for e in await dep.events("c") if e.get("reason") == "WorkerRolled"]
    assert sorted(e["message"].split()[2] for e in rolled) == before


def test_a_worker_that_could_not_load_a_model_of_spec_models_degrades_the_cluster() -> None:
    import datetime

    from legacygpu.operator.clusterstate import cluster_status

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    spec = {"replicas": 2, "models": ["digits", "resnet"]}

    def degraded(*pods: PodView) -> dict[str, Any]:
        status = cluster_status(spec=spec, generation=1, pods=list(pods), assigned={}, queued=0, running=0,
                                previous_conditions=None, selector="", now=now)
        return next(c for c in status["conditions"] if c["type"] == "Degraded")

    def worker(name: str, **stats: Any) -> PodView:
        return PodView(name=name, uid=name, phase="Running", ready=True, node="n", stats=stats)  # type: ignore[arg-type]

    fine = degraded(worker("a", models=["digits", "resnet"]), worker("b"))  # b has not published yet
    assert (fine["status"], fine["reason"]) == ("False", "AsExpected")
    bad = degraded(worker("a", models=["digits", "resnet"]), worker("b", models=["digits"]))
    assert (bad["status"], bad["reason"]) == ("True", "ModelLoadFailed")
    assert "worker pod b" in bad["message"] and "resnet" in bad["message"] and "digits" not in bad["message"]
