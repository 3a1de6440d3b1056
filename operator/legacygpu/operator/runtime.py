"""The operator's in-memory runtime: caches and wake-ups, never the truth.

All state lives in the objects; what is kept here only makes the operator
fast and is rebuilt from nothing on restart:

* the index of tasks by cluster (:class:`~legacygpu.operator.taskwatch.TaskIndex`,
  kept by the operator's own task watch) and the clusters known to exist
  (:meth:`OperatorRuntime.cluster_seen`, :meth:`~OperatorRuntime.cluster_deleted`,
  :meth:`~OperatorRuntime.clusters_listed`);
* a wake-up event per cluster, set by task and pod events, so a cluster's
  reconcile loop runs as soon as something changes instead of polling;
* read-your-writes overlays: after a status write the watch may lag by a
  few milliseconds, so the next pass would see a task as still ``Queued``
  and assign it twice, or a pod as missing and create another. An overlay
  entry lives until the index shows a newer version of the object;
* the strategy instance per cluster (round-robin remembers its position);
* background tasks spawned by handlers (delayed re-checks, batch sources
  read from a URL), cancelled on shutdown.

One runtime is handed to every handler as kopf's ``memo.runtime``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from legacygpu.core.kube.client import KubeApi
from legacygpu.core.scheduling import Strategy, make_strategy
from legacygpu.core.tasks import RetryPolicy
from legacygpu.operator.access import AccessChecker
from legacygpu.operator.clusterstate import PodView
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.metrics import OperatorMetrics
from legacygpu.operator.taskstate import TaskView
from legacygpu.operator.taskwatch import ClusterKey, TaskIndex, scopes_of

__all__ = ["ClusterKey", "OperatorRuntime"]

log = logging.getLogger(__name__)

_OVERLAY_TTL = 60.0
_DELETIONS_KEPT = 600.0
"""How long a cluster's deletion is remembered: far longer than a listing can take (its two LISTs time
out after 70 s each), so no listing that began before the deletion can still arrive after."""


@dataclass
class OperatorRuntime:
    config: OperatorConfig
    api: KubeApi
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    wakers: dict[ClusterKey, asyncio.Event] = field(default_factory=dict)
    strategies: dict[ClusterKey, Strategy] = field(default_factory=dict)
    task_overlay: dict[tuple[str, str], tuple[str, TaskView, float]] = field(default_factory=dict)
    created_pods: dict[ClusterKey, dict[str, float]] = field(default_factory=dict)
    deleted_pods: dict[ClusterKey, dict[str, float]] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    service_checked: dict[ClusterKey, float] = field(default_factory=dict)
    status_written: dict[ClusterKey, float] = field(default_factory=dict)
    cluster_status: dict[ClusterKey, dict[str, Any]] = field(default_factory=dict)
    """The status last written per cluster (the daemon's body may lag behind it)."""
    orphan_checks: set[tuple[str, str]] = field(default_factory=set)
    source_listings: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)
    """Batch sources read outside the cluster pass (legacygpu.operator.batch): (namespace, cluster, task uid,
    source) -> the keys, the error, or None while the read is under way. An entry goes when its batch is
    split or ends, or, once per pass, when the batch is no longer an open batch of its cluster."""
    access: AccessChecker = field(init=False)
    """Cached answers: may a cluster's worker ServiceAccount do a worker's job?"""
    tasks: TaskIndex = field(init=False)
    """Every served task's view by cluster (legacygpu.operator.taskwatch)."""
    clusters: set[ClusterKey] = field(default_factory=set)
    """Clusters known to exist: added by the cluster event handler and the task watch's listings, removed
    by the cluster's DELETED event (see :meth:`clusters_listed` for why a listing cannot add one back).
    A task whose cluster is not here is checked as an orphan (which asks the API, so a cluster missing
    here costs a lookup, never a wrongly failed task)."""
    clusters_deleted_at: dict[ClusterKey, float] = field(default_factory=dict)
    """``time.monotonic()`` when each recently deleted cluster's DELETED event was handled."""
    closing: bool = False
    """Set by :meth:`shutdown` (a stop or a lost Lease): from then on nothing new is started or handled."""

    def __post_init__(self) -> None:
        self.access = AccessChecker(self.api)
        self.tasks = TaskIndex(scopes_of(self.config.namespaces))

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.config.retry_base_seconds, self.config.retry_cap_seconds)

    # -- wake-ups --------------------------------------------------------------------------------

    def waker(self, key: ClusterKey) -> asyncio.Event:
        return self.wakers.setdefault(key, asyncio.Event())

    def poke(self, key: ClusterKey) -> None:
        self.waker(key).set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; a failure is logged (nobody awaits it to see the exception).

        Once closing (after a lost Lease a non-leader must not write), ``coro`` is dropped unrun.
        """
        if self.closing:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background task %s failed: %r", task.get_coro(), error, exc_info=error)

    async def shutdown(self) -> None:
        self.closing = True
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)

    def strategy(self, key: ClusterKey, name: str) -> Strategy:
        current = self.strategies.get(key)
        if current is None or current.name != name:
            current = self.strategies[key] = make_strategy(name)
        return current

    # -- known clusters --------------------------------------------------------------------------

    def cluster_seen(self, key: ClusterKey) -> None:
        """An event showed the cluster (it exists now, even if an earlier one of its name was deleted)."""
        self.clusters.add(key)
        self.clusters_deleted_at.pop(key, None)

    def cluster_deleted(self, key: ClusterKey) -> None:
        """The cluster's DELETED event: forget it, and remember when (for :meth:`clusters_listed`)."""
        now = time.monotonic()
        self.clusters.discard(key)
        self.clusters_deleted_at[key] = now
        for old in [k for k, at in self.clusters_deleted_at.items() if now - at > _DELETIONS_KEPT]:
            del self.clusters_deleted_at[old]

    def clusters_listed(self, keys: Iterable[ClusterKey], begun: float) -> None:
        """Add the clusters a listing found, but none deleted after the listing ``begun``.

        The listing is taken on a thread and handled later, on the event loop: a cluster deleted in
        between is in it, and adding it back would leave its later tasks poking a cluster that no
        longer exists instead of failing ``ClusterNotFound``.
        """
        for key in keys:
            deleted = self.clusters_deleted_at.get(key)
            if deleted is None or deleted < begun:
                self.clusters.add(key)

    def forget(self, key: ClusterKey) -> None:
        """Drop the caches of a deleted cluster (its deletion time stays: the loop may stop before the
        DELETED event, or after it when the finalizer was removed by hand; age alone ends that entry)."""
        self.wakers.pop(key, None)
        self.strategies.pop(key, None)
        self.created_pods.pop(key, None)
        self.deleted_pods.pop(key, None)
        self.service_checked.pop(key, None)
        self.status_written.pop(key, None)
        self.cluster_status.pop(key, None)
        for listed in [k for k in self.source_listings if k[:2] == key]:
            del self.source_listings[listed]

    # -- read-your-writes ------------------------------------------------------------------------

    def wrote_task(self, before: TaskView, after: TaskView) -> None:
        self.task_overlay[before.namespace, before.name] = (before.resource_version, after, time.monotonic())

    def tasks_seen(self, views: Iterable[TaskView]) -> list[TaskView]:
        """The indexed tasks, with our own writes the index has not caught up with."""
        now = time.monotonic()
        result = []
        for view in views:
            key = (view.namespace, view.name)
            entry = self.task_overlay.get(key)
            if entry is not None:
                base_rv, written, at = entry
                if view.resource_version == base_rv and now - at < _OVERLAY_TTL:
                    result.append(written)
                    continue
                del self.task_overlay[key]
            result.append(view)
        return result

    def created_pod(self, key: ClusterKey, name: str) -> None:
        self.created_pods.setdefault(key, {})[name] = time.monotonic()

    def deleted_pod(self, key: ClusterKey, name: str) -> None:
        self.deleted_pods.setdefault(key, {})[name] = time.monotonic()

    def pods_seen(self, key: ClusterKey, views: Iterable[PodView], placeholder: PodView) -> list[PodView]:
        """Indexed pods, plus pods we created that the index lacks, minus pods we deleted.

        ``views`` are the index's pods. A created pod leaves the overlay only once a
        view with its name *and a uid* (which only the API server assigns) shows up;
        placeholders have no uid, so a list this method returned, passed in again,
        cannot make it forget a pod the index has not seen yet.
        """
        now = time.monotonic()
        deleted = self.deleted_pods.get(key, {})
        created = self.created_pods.get(key, {})
        pods = []
        for pod in views:
            at = deleted.get(pod.name)
            if at is not None and not pod.deleting and now - at < _OVERLAY_TTL:
                pod = dataclasses.replace(pod, deleting=True, ready=False)
            pods.append(pod)
        names = {pod.name for pod in pods}
        indexed = {pod.name for pod in pods if pod.uid}
        for name in [n for n, at in deleted.items() if n not in names or now - at >= _OVERLAY_TTL]:
            del deleted[name]
        for name, at in list(created.items()):
            if name in indexed or now - at >= _OVERLAY_TTL:
                del created[name]
            elif name not in names:
                pods.append(dataclasses.replace(placeholder, name=name))
        return pods
