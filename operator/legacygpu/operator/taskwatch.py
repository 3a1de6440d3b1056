"""The operator's own watch of InferenceTasks, and the index it keeps.

Tasks are the operator's busiest resource (four watch events per task), and
nothing about them needs kopf: no handler reads a diff, none keeps progress,
none adds a finalizer. kopf's machinery per event (its queueing, its
per-object workers, its handler selection) cost the operator more CPU than
the reconcile passes themselves. So tasks are watched here, plainly:

* :class:`TaskWatch` runs one thread per served scope (each namespace, or
  the whole cluster) that LISTs the tasks (and, in the same breath, the
  clusters), then WATCHes from the list's resourceVersion. A watch the
  server ends after its timeout is opened again from the last version seen
  (bookmarks keep it fresh); an ``ERROR`` event (410 Gone: the version
  expired), a refused watch or a dropped connection means LIST again. The
  thread reduces each task to a :class:`~legacygpu.operator.taskstate.TaskView`
  and hands it to the event loop, where all of the index changes happen;
* :class:`TaskIndex` holds the views by cluster, what a reconcile pass
  reads. A LIST *replaces* its scope's part of the index in one step, so a
  pass never sees half of a new listing; ``synced`` is set once every scope
  was listed, and nothing trusts the index before (a new leader would see
  an empty cluster and, say, place a task twice).

What to do with a task that changed (poke its cluster's loop, or settle an
orphan) is :mod:`legacygpu.operator.task_handlers`'s; this module only
delivers. The watch runs only while the operator runs kopf, that is only on
the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import kubernetes

from legacygpu.core.kube.client import KubeApi, resource_path
from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION
from legacygpu.operator.taskstate import TaskView, task_view

__all__ = ["ListingHandler", "TaskEventHandler", "TaskIndex", "TaskWatch", "WatchExpiredError", "scopes_of"]

log = logging.getLogger(__name__)

ClusterKey = tuple[str, str]
TaskEventHandler = Callable[[str, TaskView], None]
"""Called on the event loop for each ``ADDED``/``MODIFIED``/``DELETED`` task: (type, view)."""
ListingHandler = Callable[[str | None, list[TaskView], set[ClusterKey]], None]
"""Called on the event loop for each LIST: (scope, the tasks, the clusters listed)."""

_WATCH_SECONDS = 300.0
_BACKOFF_START, _BACKOFF_CAP = 0.5, 10.0


class WatchExpiredError(Exception):
    """The watch sent an ``ERROR`` event (410 Gone: its resourceVersion is too old): LIST again."""


class TaskIndex:
    """The served tasks' views by (namespace, cluster); changed only on the event loop.

    ``scopes`` are the namespaces watched, or ``(None,)`` for the whole cluster.
    """

    def __init__(self, scopes: Sequence[str | None] = (None,)) -> None:
        self.scopes = tuple(scopes)
        self._by_cluster: dict[ClusterKey, dict[str, TaskView]] = {}
        self._cluster_of: dict[tuple[str, str], ClusterKey] = {}
        self._unlisted = set(scopes)
        self.synced = asyncio.Event()
        """Set once every scope was listed: before, the index may lack tasks that exist."""

    def __len__(self) -> int:
        return len(self._cluster_of)

    def get(self, key: ClusterKey) -> list[TaskView]:
        """A copy: the index changes while a pass awaits the API."""
        return list(self._by_cluster.get(key, {}).values())

    def put(self, view: TaskView) -> ClusterKey | None:
        """Index ``view``; the cluster it was under before, if another (a changed ``clusterRef``)."""
        task = (view.namespace, view.name)
        key = (view.namespace, view.cluster)
        before = self._cluster_of.get(task)
        if before is not None and before != key:
            self._drop(task, before)
        self._by_cluster.setdefault(key, {})[view.name] = view
        self._cluster_of[task] = key
        return before if before != key else None

    def remove(self, namespace: str, name: str) -> ClusterKey | None:
        """Forget a deleted task; the cluster it was under, if it was indexed."""
        key = self._cluster_of.pop((namespace, name), None)
        if key is not None:
            self._drop((namespace, name), key)
        return key

    def _drop(self, task: tuple[str, str], key: ClusterKey) -> None:
        tasks = self._by_cluster.get(key)
        if tasks is not None:
            tasks.pop(task[1], None)
            if not tasks:
                del self._by_cluster[key]

    def replace(self, scope: str | None, views: Iterable[TaskView]) -> set[ClusterKey]:
        """Make the scope's part of the index exactly ``views`` (one step); the clusters whose tasks changed."""
        views = list(views)
        touched: set[ClusterKey] = set()
        for task, key in list(self._cluster_of.items()):
            if scope is None or task[0] == scope:
                del self._cluster_of[task]
                self._drop(task, key)
                touched.add(key)
        for view in views:
            self.put(view)
            touched.add((view.namespace, view.cluster))
        self._unlisted.discard(scope)
        if not self._unlisted:
            self.synced.set()
        return touched


class TaskWatch:
    """LIST and WATCH the tasks of ``scopes`` on threads, delivering to the event loop."""

    def __init__(
        self, configuration: kubernetes.client.Configuration, scopes: Sequence[str | None], *,
        on_event: TaskEventHandler, on_listing: ListingHandler, watch_seconds: float = _WATCH_SECONDS,
    ) -> None:
        self.scopes = list(scopes)
        self.on_event = on_event
        self.on_listing = on_listing
        self.watch_seconds = watch_seconds
        self.listings = 0
        """LISTs delivered so far (each replaced its scope's index)."""
        self._api = KubeApi(configuration, concurrency=1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for scope in self.scopes:
            thread = threading.Thread(target=self._run, args=(scope,), name=f"watch-tasks-{scope or 'all'}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """End the threads: open watches end at once; nothing is delivered from now on."""
        self._stop.set()
        self._api.close()

    # -- on the threads --------------------------------------------------------------------------

    def _run(self, scope: str | None) -> None:
        tasks = resource_path(GROUP, VERSION, TASK_PLURAL, scope)
        clusters = resource_path(GROUP, VERSION, CLUSTER_PLURAL, scope)
        backoff = _BACKOFF_START
        while not self._stop.is_set():
            try:
                version = self._list(scope, tasks, clusters)
                backoff = _BACKOFF_START
                while not self._stop.is_set():
                    version = self._watch(tasks, version)
            except Exception as exc:  # the watch outlives any trouble: LIST again after a pause
                if self._stop.is_set():
                    return
                log.info("task watch (%s): %s; listing again in %.1fs", scope or "all namespaces", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_CAP, backoff * 2)

    def _list(self, scope: str | None, tasks: str, clusters: str) -> str:
        """LIST tasks, then clusters, and deliver both; the tasks' resourceVersion to watch from."""
        listing = self._api.request_sync("GET", tasks)
        views = [task_view(item) for item in listing.get("items") or ()]
        known = {
            (item["metadata"]["namespace"], item["metadata"]["name"])
            for item in self._api.request_sync("GET", clusters).get("items") or ()
        }
        self._deliver(self._listed, scope, views, known)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, path: str, version: str) -> str:
        """One watch from ``version`` until the server ends it; the last version seen."""
        query = {"allowWatchBookmarks": "true", **({"resourceVersion": version} if version else {})}
        for event in self._api.watch_sync(path, query=query, timeout=self.watch_seconds):
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise WatchExpiredError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._deliver(self._event, kind, task_view(obj))
        return version

    def _deliver(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed: the operator is gone
                loop.call_soon_threadsafe(callback, *args)

    # -- on the event loop -----------------------------------------------------------------------

    def _listed(self, scope: str | None, views: list[TaskView], clusters: set[ClusterKey]) -> None:
        if not self._stop.is_set():
            self.listings += 1
            self.on_listing(scope, views, clusters)

    def _event(self, kind: str, view: TaskView) -> None:
        if not self._stop.is_set():
            self.on_event(kind, view)


def scopes_of(namespaces: Iterable[str]) -> list[str | None]:
    """The scopes to watch: each namespace served, or the whole cluster when none is named."""
    return list(dict.fromkeys(namespaces)) or [None]
