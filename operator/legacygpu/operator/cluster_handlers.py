"""kopf handlers for InferenceCluster and its worker pods.

Each cluster gets one daemon, :func:`cluster_loop`, that runs
:func:`~legacygpu.operator.reconciler.reconcile_cluster` whenever something
about the cluster changes (its spec, one of its pods, one of its tasks:
the event handlers only *poke* the loop) and otherwise when the next timed
event is due, or every ``resync_seconds`` to catch drift. A daemon is
kopf's way to keep one long-lived coroutine per object, so passes for one
cluster never overlap and different clusters proceed in parallel.

The daemon makes kopf put a finalizer on the cluster. That finalizer is the
one the operator needs: on deletion, :func:`on_cluster_delete` fails the
cluster's unfinished tasks (``ClusterNotFound``) and deletes its pods before
the object goes (the pods' owner references would also let the garbage
collector remove them). kopf removes the finalizer afterwards.

Once the runtime closes (a stop, or a lost Lease, while kopf winds down)
the loop ends after its pass and the finalizer refuses (kopf keeps it, for
the next leader): a replica that no longer leads writes nothing.

The clusters known to exist (``rt.clusters``, which decides whether a task
is an orphan) come from :func:`on_cluster_event` (every event but
``DELETED`` adds the cluster, ``DELETED`` removes it) and from the task
watch's listings, which never add back a cluster deleted after they began
(:meth:`~legacygpu.operator.runtime.OperatorRuntime.clusters_listed`).

kopf keeps one index from its watches, ``legacygpu_pods`` (namespace,
cluster) → :class:`PodView`, handed to handlers by id. Tasks are indexed by
the operator's own watch (:mod:`legacygpu.operator.taskwatch`), not by kopf:
kopf holds handlers back until its own indexes are filled, but not that one,
so the loop and the finalizer wait until their namespace's tasks were
listed before they read it. The indexing function is a coroutine although
it never awaits: kopf runs a plain function in its thread pool executor (a
hand-off to a thread, and back, for every watch event), a coroutine inline
on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, LABEL_CLUSTER, VERSION, now_utc, terminal_status
from legacygpu.core.tasks import Phase, Reason
from legacygpu.operator import events
from legacygpu.operator.clusterstate import PodView, pod_view
from legacygpu.operator.events import EventReason
from legacygpu.operator.reconciler import reconcile_cluster, write_task
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.task_handlers import settle_orphan

__all__ = [
    "cluster_loop",
    "index_pods",
    "on_cluster_delete",
    "on_cluster_event",
    "on_pod_event",
    "register",
]

_BACKOFF_START, _BACKOFF_CAP = 1.0, 30.0


async def index_pods(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], PodView]:
    return {(namespace, labels[LABEL_CLUSTER]): pod_view(body)}


async def on_cluster_event(type: str | None, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Note the cluster as known (or, ``DELETED``, as gone) and poke its loop."""
    rt: OperatorRuntime = memo.runtime
    if type != "DELETED":
        rt.cluster_seen((namespace, name))
        rt.poke((namespace, name))
        return
    # Normally the finalizer (on_cluster_delete) has settled the tasks by now. A cluster whose
    # finalizer was removed by hand vanishes without it: its tasks get the orphan check, which
    # fails the unfinished ones ClusterNotFound (finished ones only cost a lookup). Tasks not
    # listed yet are checked when their listing arrives: the cluster is no longer known then, and
    # a listing that began before this event cannot make it known again.
    rt.cluster_deleted((namespace, name))
    for task in rt.tasks_seen(rt.tasks.get((namespace, name))):
        settle_orphan(rt, task)


async def on_pod_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.poke((namespace, labels[LABEL_CLUSTER]))


async def cluster_loop(
    body: kopf.Body,
    namespace: str,
    name: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    logger: kopf.Logger,
    legacygpu_pods: kopf.Index[tuple[str, str], PodView],
    **_: Any,
) -> None:
    """Reconcile the cluster until kopf stops the daemon (deletion or operator exit).

    A poke while a pass runs is never lost: the wake-up is cleared *before*
    each pass, so one set during it ends the wait after it at once.
    """
    rt: OperatorRuntime = memo.runtime
    key = (namespace, name)
    waker = rt.waker(key)
    stop = asyncio.ensure_future(stopped.wait())
    backoff = _BACKOFF_START
    logger.info("reconcile loop started")
    try:
        synced = asyncio.ensure_future(rt.tasks.wait_listed(namespace))
        await asyncio.wait({synced, stop}, return_when=asyncio.FIRST_COMPLETED)
        synced.cancel()
        while not stopped and not rt.closing:  # closing: a stop or a lost Lease, kopf not stopped yet
            waker.clear()
            try:
                delay = await reconcile_cluster(
                    rt, body, tasks=rt.tasks.get(key), pods=legacygpu_pods.get(key, ()), logger=logger
                )
                backoff = _BACKOFF_START
            except Exception as exc:
                rt.metrics.reconcile_errors.labels("InferenceCluster").inc()
                logger.warning("reconcile failed, retrying in %.0fs: %s", backoff, exc, exc_info=True)
                delay, backoff = backoff, min(_BACKOFF_CAP, backoff * 2)
            wake = asyncio.ensure_future(waker.wait())
            await asyncio.wait({wake, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
    finally:
        stop.cancel()
        if stopped.reason is not None and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
            # Here, once the last pass is over, rather than in a handler that a pass in flight could undo.
            rt.forget(key)
            rt.metrics.forget_cluster(namespace, name)
        logger.info("reconcile loop stopped (%s)", stopped.reason)


async def on_cluster_delete(
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    logger: kopf.Logger,
    legacygpu_pods: kopf.Index[tuple[str, str], PodView],
    **_: Any,
) -> None:
    """Fail the cluster's unfinished tasks and remove its pods before the finalizer goes."""
    rt: OperatorRuntime = memo.runtime
    if rt.closing:  # the finalizer stays: the next leader settles the tasks and pods
        raise kopf.TemporaryError("the operator is stopping", delay=1)
    if not rt.tasks.listed(namespace):
        raise kopf.TemporaryError(f"the tasks of namespace {namespace!r} are not listed yet", delay=1)
    key = (namespace, name)
    now = now_utc()
    left = 0
    # Copies: the indexes change under us while we await the API (pod and task events keep arriving).
    for task in rt.tasks_seen(rt.tasks.get(key)):
        if task.terminal:
            continue
        status = terminal_status(
            task.status, created=task.created, phase=Phase.FAILED, reason=Reason.CLUSTER_NOT_FOUND,
            message=f"InferenceCluster {name!r} was deleted", now=now,
        )
        if not await write_task(rt, task, status, event=("Warning", Reason.CLUSTER_NOT_FOUND.value, status["message"])):
            left += 1
    for pod in list(legacygpu_pods.get(key, ())):
        if rt.closing:
            raise kopf.TemporaryError("the operator is stopping", delay=1)
        await rt.api.delete_pod(namespace, pod.name)
    if left:
        raise kopf.TemporaryError(f"{left} task(s) changed while failing them; retrying", delay=1)
    events.post(body, "Normal", EventReason.CLUSTER_DELETED, "workers removed; unfinished tasks failed")
    logger.info("cluster deleted: workers removed, unfinished tasks failed")


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the cluster handlers to ``registry``."""
    resource = (GROUP, VERSION, CLUSTER_PLURAL)
    kopf.index("v1", "pods", labels={LABEL_CLUSTER: kopf.PRESENT}, id="legacygpu_pods", registry=registry)(index_pods)
    kopf.on.event(*resource, id="cluster_event", registry=registry)(on_cluster_event)
    kopf.on.event("v1", "pods", labels={LABEL_CLUSTER: kopf.PRESENT}, id="pod_event", registry=registry)(on_pod_event)
    kopf.daemon(*resource, id="reconcile", cancellation_timeout=10.0, registry=registry)(cluster_loop)
    kopf.on.delete(*resource, id="finalize", backoff=2.0, registry=registry)(on_cluster_delete)
