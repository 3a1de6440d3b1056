"""What the operator does when a task changes: poke its cluster's loop, or settle an orphan.

Tasks are handled level-triggered through their cluster's reconcile loop.
The operator's own watch (:mod:`legacygpu.operator.taskwatch`, not kopf)
delivers every task event and every LIST here, on the event loop:
:func:`on_task_event` keeps the task index (``rt.tasks``, keyed by
(namespace, clusterRef)) and pokes the loop of the task's cluster
(:func:`on_task_unreadable` forgets a task an event made unreadable);
:func:`on_task_listing` replaces a scope's part of the index with a fresh
LIST and pokes every cluster whose tasks it touched. Once the operator is
closing (stopped, or its Lease lost) both do nothing: a replica that no
longer leads must not act on a task. Nothing is written to
tasks here: tasks need no finalizer, and every extra write would race with
the workers' resourceVersion-guarded status writes.

A task whose cluster the operator does not know is an *orphan*:
:func:`check_orphan` looks the cluster up in the API (the cluster may be
newer than the index), waits out a short grace for clusters applied in the
same breath as their tasks, and then ends the task ``Failed`` with reason
``ClusterNotFound`` instead of leaving it ``Pending``. TTLs of finished
orphans are honoured the same way.
"""

from __future__ import annotations

import asyncio
import logging

from legacygpu.core.kube.contract import now_utc
from legacygpu.core.kube.errors import ApiError, ApiNotFoundError
from legacygpu.operator.reconciler import write_task
from legacygpu.operator.runtime import ClusterKey, OperatorRuntime
from legacygpu.operator.taskstate import TaskView, decide, task_view
from legacygpu.operator.taskwatch import TaskWatch

__all__ = [
    "check_orphan", "make_task_watch", "on_task_event", "on_task_listing", "on_task_unreadable", "settle_orphan",
]

log = logging.getLogger(__name__)


def on_task_event(rt: OperatorRuntime, kind: str, view: TaskView) -> None:
    """One watch event: index (or forget) the task, then poke its cluster or settle it as an orphan."""
    if rt.closing:
        return
    key = (view.namespace, view.cluster)
    if kind == "DELETED":
        _forget(rt, view.namespace, view.name, also=key)
        return
    before = rt.tasks.put(view)
    if before is not None and before in rt.clusters:
        rt.poke(before)  # the task left that cluster (a changed clusterRef)
    if key in rt.clusters:
        rt.poke(key)
    else:
        settle_orphan(rt, view)


def on_task_unreadable(rt: OperatorRuntime, namespace: str, name: str) -> None:
    """A watch event of a task the operator cannot read: forget its old view (and poke its cluster).

    Kept, that view would steer writes that can only conflict (each conflict pokes the loop for
    another pass) and hold a slot of its pod until the next LIST, which may never come.
    """
    if not rt.closing:
        _forget(rt, namespace, name)


def _forget(rt: OperatorRuntime, namespace: str, name: str, also: ClusterKey | None = None) -> None:
    """Drop a task from the index and the overlay; poke the cluster(s) it was under."""
    before = rt.tasks.remove(namespace, name)
    rt.task_overlay.pop((namespace, name), None)
    for cluster in {key for key in (also, before) if key is not None and key in rt.clusters}:
        rt.poke(cluster)


def on_task_listing(
    rt: OperatorRuntime, scope: str | None, views: list[TaskView], clusters: set[ClusterKey], begun: float
) -> None:
    """A fresh LIST of a scope: replace its part of the index at once, poke, settle orphans.

    ``clusters`` were listed at ``begun`` (``time.monotonic()``); see :meth:`OperatorRuntime.clusters_listed`.
    """
    if rt.closing:
        return
    rt.clusters_listed(clusters, begun)
    replaced = rt.tasks.replace(scope, views)
    for task in replaced.removed:  # deleted while no watch was open: no DELETED event will drop these
        rt.task_overlay.pop(task, None)
    for key in replaced.touched:
        if key in rt.clusters:
            rt.poke(key)
    for view in views:
        if (view.namespace, view.cluster) not in rt.clusters:
            settle_orphan(rt, view)


def make_task_watch(rt: OperatorRuntime) -> TaskWatch:
    """The operator's watch of the served tasks, not started yet (the caller starts and stops it)."""
    return TaskWatch(
        rt.api.configuration, rt.tasks.scopes,
        on_event=lambda kind, view: on_task_event(rt, kind, view),
        on_listing=lambda scope, views, clusters, begun: on_task_listing(rt, scope, views, clusters, begun),
        on_unreadable=lambda namespace, name: on_task_unreadable(rt, namespace, name),
        restarts=rt.metrics.task_watch_restarts,
    )


def settle_orphan(rt: OperatorRuntime, view: TaskView) -> None:
    """Start :func:`check_orphan` for a task whose cluster is unknown, unless it is settled or being settled."""
    if view.terminal and view.ttl_seconds is None and rt.config.finished_task_ttl_seconds is None:
        return
    if (view.namespace, view.name) not in rt.orphan_checks:
        rt.orphan_checks.add((view.namespace, view.name))
        rt.spawn(check_orphan(rt, view.namespace, view.name))


async def check_orphan(rt: OperatorRuntime, namespace: str, name: str) -> None:
    """Settle a task whose cluster is unknown: hand it to its cluster, fail it, or expire it."""
    try:
        for _ in range(100):
            try:
                body = await rt.api.get_task(namespace, name)
            except ApiNotFoundError:
                return
            view = task_view(body)
            if await rt.api.get_cluster(namespace, view.cluster) is not None:
                rt.poke((namespace, view.cluster))
                return
            now = now_utc()
            action = decide(
                view, cluster_exists=False, pods={}, now=now, policy=rt.policy,
                grace_seconds=rt.config.cluster_not_found_grace_seconds,
                default_ttl_seconds=rt.config.finished_task_ttl_seconds,
            )
            if action is None:
                return
            if action.delete:
                await rt.api.delete_task(namespace, name)
                return
            if action.status is not None:
                if await write_task(rt, view, action.status, event=action.event):
                    return
                continue
            if action.wake_at is None:
                return
            await asyncio.sleep(max(0.05, (action.wake_at - now).total_seconds()))
    except ApiError as exc:
        rt.metrics.reconcile_errors.labels("InferenceTask").inc()
        log.warning("could not settle task %s/%s without a cluster: %s", namespace, name, exc)
    finally:
        rt.orphan_checks.discard((namespace, name))
