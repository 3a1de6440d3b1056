"""What a cluster's worker pods look like, and what to do about it (pure functions).

:func:`pod_view` reduces a Pod to the few facts the operator uses (ready,
failed, terminating, unschedulable and why, the worker's published stats).
:func:`plan_scale` decides which pods to create and which to delete: failed
pods are replaced, outdated pods (an older pod template) are rolled, and on
scale-down the victims are, in order, outdated pods, pods not yet
scheduled, pods not ready, pods holding the fewest tasks, and the newest.
:func:`cluster_status` computes the status and conditions from a snapshot,
and :func:`worker_infos` turns ready pods into the
:class:`~legacygpu.core.scheduling.WorkerInfo` the shared strategies rank.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from legacygpu.core import scheduling
from legacygpu.core.kube.contract import ANNOTATION_DRAIN, ANNOTATION_WORKER_STATS, WorkerStats
from legacygpu.core.scheduling import WorkerInfo
from legacygpu.operator.conditions import ClusterCondition, ConditionReason, Desired, merge_conditions
from legacygpu.operator.pods import LABEL_TEMPLATE_HASH

__all__ = [
    "BAD_WAITING_REASONS",
    "PodView",
    "ScalePlan",
    "cluster_status",
    "desired_workers",
    "plan_scale",
    "pod_view",
    "worker_infos",
]

BAD_WAITING_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"}
)


@dataclass(frozen=True)
class PodView:
    """The facts about one worker pod the operator acts on."""

    name: str
    uid: str = ""
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    node: str | None = None
    created: str = ""
    unschedulable: str | None = None
    """The scheduler's message while the pod cannot be placed."""
    waiting: str | None = None
    """``Reason: message`` of a container stuck waiting (crash loop, image pull)."""
    stats: WorkerStats = field(default_factory=lambda: WorkerStats())
    draining: bool = False
    """Annotated ``legacygpu.io/drain=true``: finishes what runs, takes nothing new."""
    template_hash: str = ""
    """The pod's ``legacygpu.io/template-hash`` label: which spec it was built from."""

    @property
    def failed(self) -> bool:
        return self.phase in ("Failed", "Succeeded")

    @property
    def live(self) -> bool:
        """Counts toward replicas: exists, not terminating, not finished."""
        return not self.deleting and not self.failed


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    scheduled = conditions.get("PodScheduled") or {}
    unschedulable = None
    if scheduled.get("status") == "False":
        unschedulable = scheduled.get("message") or scheduled.get("reason") or "Unschedulable"
    waiting = None
    for container in status.get("containerStatuses") or ():
        state = (container.get("state") or {}).get("waiting") or {}
        if state.get("reason") in BAD_WAITING_REASONS:
            waiting = f"{state['reason']}: {state.get('message', '')}".rstrip(": ")
            break
    stats: WorkerStats = WorkerStats()
    raw_stats = (meta.get("annotations") or {}).get(ANNOTATION_WORKER_STATS)
    if raw_stats:
        try:
            loaded = json.loads(raw_stats)
            if isinstance(loaded, dict):
                stats = WorkerStats(**{k: v for k, v in loaded.items() if k in WorkerStats.__annotations__})
        except ValueError:
            pass
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        phase=status.get("phase") or "Pending",
        ready=ready and not meta.get("deletionTimestamp"),
        deleting=bool(meta.get("deletionTimestamp")),
        node=(body.get("spec") or {}).get("nodeName"),
        created=meta.get("creationTimestamp") or "",
        unschedulable=unschedulable,
        waiting=waiting,
        stats=stats,
        draining=(meta.get("annotations") or {}).get(ANNOTATION_DRAIN) == "true",
        template_hash=(meta.get("labels") or {}).get(LABEL_TEMPLATE_HASH, ""),
    )


def desired_workers(spec: Mapping[str, Any]) -> int:
    """Workers wanted now: none while suspended, else replicas within [min, max]."""
    if spec.get("suspend"):
        return 0
    replicas = int(spec.get("replicas", 1))
    low, high = int(spec.get("minReplicas", 0)), int(spec.get("maxReplicas", replicas))
    return max(low, min(high, replicas))


@dataclass(frozen=True)
class ScalePlan:
    create: int = 0
    delete: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    """The failed pods among ``delete``."""
    rolled: tuple[str, ...] = ()
    """The outdated pods among ``delete`` (built from an older pod template)."""


def _outdated(live: Sequence[PodView], assigned: Mapping[str, int], template_hash: str) -> tuple[str, ...]:
    """Outdated pods to replace now, one ready pod at a time (a rolling update).

    Outdated pods that are not ready go at once: they serve nothing, and a
    spec change is often the fix for them (a service account granted, an
    image corrected). A ready one goes only when every up-to-date pod is
    ready, so a template whose pods never become ready stops the roll after
    one pod instead of taking the whole cluster down.
    """
    old = [p for p in live if p.template_hash != template_hash]
    if not old:
        return ()
    unready = tuple(p.name for p in old if not p.ready)
    if unready:
        return unready
    if any(not p.ready for p in live if p.template_hash == template_hash):
        return ()
    newest_first = sorted(old, key=lambda p: (p.created, p.name), reverse=True)
    return (min(newest_first, key=lambda p: assigned.get(p.name, 0)).name,)


def plan_scale(
    desired: int, pods: Sequence[PodView], assigned: Mapping[str, int], template_hash: str | None = None
) -> ScalePlan:
    """Which pods to add and remove so ``desired`` live workers of the current template remain."""
    failed = tuple(p.name for p in pods if p.failed and not p.deleting)
    live = [p for p in pods if p.live]
    rolling = template_hash is not None and len(live) <= desired
    rolled = _outdated(live, assigned, template_hash) if rolling and template_hash is not None else ()
    live = [p for p in live if p.name not in rolled]
    if len(live) <= desired:
        return ScalePlan(create=desired - len(live), delete=failed + rolled, replaced=failed, rolled=rolled)
    newest_first = sorted(live, key=lambda p: (p.created, p.name), reverse=True)
    ranked = sorted(
        newest_first,
        key=lambda p: (
            template_hash is None or p.template_hash == template_hash, p.node is not None, p.ready,
            assigned.get(p.name, 0),
        ),
    )
    victims = tuple(p.name for p in ranked[: len(live) - desired])
    return ScalePlan(create=0, delete=failed + victims, replaced=failed)


def worker_infos(pods: Sequence[PodView], assigned: Mapping[str, int], capacity: int) -> list[WorkerInfo]:
    """Ready, live pods as scheduling candidates."""
    infos = []
    for pod in pods:
        if not (pod.ready and pod.live) or pod.draining:
            continue
        stats = pod.stats
        infos.append(
            scheduling.WorkerStats.from_annotation(stats).worker_info(
                pod.name,
                assigned=assigned.get(pod.name, 0),
                capacity=capacity,
                vram_mib=int(stats.get("vramMiB") or 0),
                gpu_family=stats.get("gpuFamily"),
            )
        )
    return infos


def _wanted_models(spec: Mapping[str, Any]) -> list[str]:
    """The models every worker loads: ``spec.models`` and the names of ``spec.modelSources``."""
    wanted = [m for m in spec.get("models") or () if m]
    return wanted + [s["name"] for s in spec.get("modelSources") or () if s.get("name") and s["name"] not in wanted]


def _unloaded(spec: Mapping[str, Any], live: Sequence[PodView]) -> list[tuple[str, list[str], dict[str, str]]]:
    """Ready workers that published their loaded models without every wanted one, with the reasons they gave.

    A worker fetches and preloads the wanted models before it publishes its
    first stats, so a model missing from a published list is one that failed
    to fetch or load (``modelErrors`` says why, when the worker said).
    """
    wanted = _wanted_models(spec)
    found = []
    for pod in live:
        loaded = pod.stats.get("models")
        if pod.ready and loaded is not None:
            missing = [m for m in wanted if m not in loaded]
            if missing:
                errors = pod.stats.get("modelErrors") or {}
                found.append((pod.name, missing, {m: str(errors[m]) for m in missing if m in errors}))
    return found


def _unloaded_message(spec: Mapping[str, Any], pod: str, names: list[str], errors: dict[str, str]) -> str:
    models = set(spec.get("models") or ())
    where = "spec.models" if models.issuperset(names) else "spec.modelSources" if not models & set(names) \
        else "spec.models and spec.modelSources"
    why = "; ".join(f"{name}: {errors[name]}" for name in names if name in errors)
    return f"worker pod {pod} could not load model(s) {', '.join(names)} named in {where}" + (
        f": {why} (their tasks fail)" if why else " (the worker's log says why; their tasks fail)"
    )


def _fetching(live: Sequence[PodView]) -> str:
    """``; worker pod p fetching model m: 45% of 12.0 MiB`` for the first not-ready pod still fetching, else ``""``."""
    for pod in live:
        if pod.ready:
            continue
        for name, progress in (pod.stats.get("modelFetch") or {}).items():
            if progress.get("phase") == "Fetching":
                total = progress.get("totalBytes")
                size = f" of {int(total) / 2**20:.1f} MiB" if total else ""
                percent = f"{float(progress.get('percent') or 0):.0f}%" if total else \
                    f"{int(progress.get('bytes') or 0) / 2**20:.1f} MiB"
                return f"; worker pod {pod.name} fetching model {name}: {percent}{size}"
    return ""


def _conditions(spec: Mapping[str, Any], desired: int, pods: Sequence[PodView]) -> list[Desired]:
    live = [p for p in pods if p.live]
    ready = sum(1 for p in live if p.ready)
    suspended = bool(spec.get("suspend"))
    unschedulable = [p for p in live if p.unschedulable]
    waiting = [p for p in live if p.waiting]
    failed = [p for p in pods if p.failed]
    unloaded = _unloaded(spec, live)
    if unschedulable:
        degraded = Desired(
            ClusterCondition.DEGRADED, True, ConditionReason.UNSCHEDULABLE,
            f"worker pod {unschedulable[0].name} cannot be scheduled: {unschedulable[0].unschedulable}",
        )
    elif waiting:
        degraded = Desired(
            ClusterCondition.DEGRADED, True, ConditionReason.CONTAINER_WAITING,
            f"worker pod {waiting[0].name}: {waiting[0].waiting}",
        )
    elif failed:
        degraded = Desired(
            ClusterCondition.DEGRADED, True, ConditionReason.WORKER_FAILED,
            f"worker pod {failed[0].name} ended in phase {failed[0].phase}; replacing it",
        )
    elif unloaded:
        degraded = Desired(
            ClusterCondition.DEGRADED, True, ConditionReason.MODEL_LOAD_FAILED, _unloaded_message(spec, *unloaded[0])
        )
    else:
        degraded = Desired(ClusterCondition.DEGRADED, False, ConditionReason.AS_EXPECTED, "all workers healthy")
    if ready >= desired and len(live) == desired:
        workers_ready = Desired(
            ClusterCondition.WORKERS_READY, True, ConditionReason.ALL_WORKERS_READY,
            f"{ready}/{desired} workers ready",
        )
    elif unschedulable:
        workers_ready = Desired(
            ClusterCondition.WORKERS_READY, False, ConditionReason.UNSCHEDULABLE,
            f"{ready}/{desired} workers ready; {len(unschedulable)} cannot be scheduled: "
            f"{unschedulable[0].unschedulable}",
        )
    else:
        workers_ready = Desired(
            ClusterCondition.WORKERS_READY, False, ConditionReason.WORKERS_NOT_READY,
            f"{ready}/{desired} workers ready{_fetching(live)}",
        )
    if suspended:
        ready_cond = Desired(ClusterCondition.READY, False, ConditionReason.SUSPENDED, "the cluster is suspended")
    elif ready:
        ready_cond = Desired(
            ClusterCondition.READY, True, ConditionReason.WORKERS_AVAILABLE, f"{ready} worker(s) take tasks"
        )
    else:
        ready_cond = Desired(ClusterCondition.READY, False, ConditionReason.NO_READY_WORKERS, "no worker is ready")
    suspended_cond = Desired(
        ClusterCondition.SUSPENDED,
        suspended,
        ConditionReason.SUSPENDED if suspended else ConditionReason.NOT_SUSPENDED,
        "spec.suspend is true: workers removed, tasks wait" if suspended else "workers run",
    )
    return [ready_cond, workers_ready, degraded, suspended_cond]


def _summary(pod: PodView, assigned: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": pod.name, "phase": pod.phase, "ready": pod.ready, "assignedTasks": assigned}
    if pod.node:
        entry["node"] = pod.node
    for src, dst in (
        ("completed", "completed"),
        ("failed", "failed"),
        ("recentLatencyMs", "recentLatencyMs"),
        ("gpuFamily", "gpuFamily"),
        ("vramMiB", "vramMiB"),
        ("backend", "backend"),
    ):
        value = pod.stats.get(src)  # type: ignore[misc]
        if value is not None:
            entry[dst] = value
    return entry


def cluster_status(
    *,
    spec: Mapping[str, Any],
    generation: int | None,
    pods: Sequence[PodView],
    assigned: Mapping[str, int],
    queued: int,
    running: int,
    previous_conditions: Sequence[Mapping[str, Any]] | None,
    selector: str,
    now: datetime.datetime,
    extra_conditions: Sequence[Desired] = (),
) -> dict[str, Any]:
    """The whole ``status`` of a cluster from a snapshot of its pods and tasks."""
    desired = desired_workers(spec)
    live = [p for p in pods if p.live]
    ready = sum(1 for p in live if p.ready)
    wanted = _conditions(spec, desired, pods)
    overridden = {c.type for c in extra_conditions}
    wanted = [c for c in wanted if c.type not in overridden] + list(extra_conditions)
    status: dict[str, Any] = {
        "desiredWorkers": desired,
        "replicas": len(live),
        "readyWorkers": ready,
        "devices": ready * int(spec.get("gpusPerWorker", 1)),
        "queuedTasks": queued,
        "runningTasks": running,
        "selector": selector,
        "workers": [_summary(p, assigned.get(p.name, 0)) for p in sorted(live, key=lambda p: p.name)],
        "conditions": merge_conditions(previous_conditions, wanted, now=now, generation=generation),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status
