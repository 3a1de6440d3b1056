"""kopf handlers for InferenceTask.

Tasks are handled level-triggered through their cluster's reconcile loop:
the event handler only indexes the task (``legacygpu_tasks``, keyed by
(namespace, clusterRef)) and pokes that loop. No kopf state is written to
tasks (an ``on.event`` handler keeps no progress annotations and adds no
finalizer): tasks need no finalizer, and every extra write would race with
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
from typing import Any

import kopf

from legacygpu.core.kube.contract import GROUP, TASK_PLURAL, VERSION, now_utc
from legacygpu.core.kube.errors import ApiError, ApiNotFoundError
from legacygpu.operator.reconciler import write_task
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.taskstate import TaskView, decide, task_view

__all__ = ["check_orphan", "index_tasks", "on_task_event", "register", "settle_orphan"]

log = logging.getLogger(__name__)


async def index_tasks(
    namespace: str, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], TaskView]:
    """The task's view under its cluster (a coroutine so that kopf runs it inline, not in a thread)."""
    return {(namespace, spec.get("clusterRef", "")): task_view(body)}


async def on_task_event(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    name: str,
    spec: kopf.Spec,
    memo: kopf.Memo,
    legacygpu_clusters: kopf.Index[tuple[str, str], bool],
    **_: Any,
) -> None:
    rt: OperatorRuntime = memo.runtime
    key = (namespace, spec.get("clusterRef", ""))
    if key in legacygpu_clusters:
        rt.poke(key)
        return
    if type == "DELETED":
        return
    settle_orphan(rt, task_view(body))


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


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the task handlers to ``registry``."""
    resource = (GROUP, VERSION, TASK_PLURAL)
    kopf.index(*resource, id="legacygpu_tasks", registry=registry)(index_tasks)
    kopf.on.event(*resource, id="task_event", registry=registry)(on_task_event)
