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
  pass never sees half of a new listing. Each scope is trusted only once it
  was listed (:meth:`TaskIndex.wait_listed`: a cluster's loop and its
  finalizer wait for their namespace's scope), and ``synced`` is set once
  every scope was (the operator is ready then): before, a new leader would
  see an empty cluster and, say, place a task twice.

A task the operator cannot read (an unknown phase, a number that is not
one) is skipped with a WARNING naming it, never the reason to list again;
a watch event that makes a task unreadable drops it from the index (its
old view would steer writes that can only conflict, and hold a slot of
its pod). A watch that keeps failing logs a WARNING from its second
failure in a row (at once while its scope was never listed) and counts
each restart in ``legacygpu_operator_task_watch_restarts_total{reason}``.
A watch the server ends at once with no event (a proxy cutting the stream)
counts as a failure, so it is opened again only after a pause.

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
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import kubernetes
from prometheus_client import Counter

from legacygpu.core.kube.client import KubeApi, resource_path
from legacygpu.core.kube.contract import CLUSTER_PLURAL, GROUP, TASK_PLURAL, VERSION
from legacygpu.operator.taskstate import TaskView, task_view

__all__ = [
    "ClusterKey", "EmptyWatchError", "ListingHandler", "Replaced", "TaskEventHandler", "TaskIndex", "TaskWatch",
    "UnreadableHandler", "WatchExpiredError", "scopes_of",
]

log = logging.getLogger(__name__)

ClusterKey = tuple[str, str]
"""(namespace, cluster name)."""
TaskEventHandler = Callable[[str, TaskView], None]
"""Called on the event loop for each ``ADDED``/``MODIFIED``/``DELETED`` task: (type, view)."""
UnreadableHandler = Callable[[str, str], None]
"""Called on the event loop for a watch event of a task the operator cannot read: (namespace, name)."""
ListingHandler = Callable[[str | None, list[TaskView], set[ClusterKey], float], None]
"""Called on the event loop for each LIST: (scope, the tasks, the clusters listed, and the
``time.monotonic()`` taken just before the clusters were listed)."""

_WATCH_SECONDS = 300.0
_LIST_TIMEOUT = (10.0, 60.0)
"""(connect, read) seconds for each LIST: a server that stops answering fails the LIST, which is retried."""
_JOIN_SECONDS = 2.0
_BACKOFF_START, _BACKOFF_CAP = 0.5, 10.0
_EMPTY_WATCH_SECONDS = 1.0
"""A watch that ends sooner than this with no event failed (it is reopened after a pause, not at once)."""


class WatchExpiredError(Exception):
    """The watch sent an ``ERROR`` event (410 Gone: its resourceVersion is too old): LIST again."""


class EmptyWatchError(Exception):
    """The server ended a watch at once with no event: LIST again after a pause, not in a hot loop."""


class Replaced(NamedTuple):
    """What :meth:`TaskIndex.replace` changed."""

    touched: set[ClusterKey]
    """The clusters whose tasks changed."""
    removed: set[tuple[str, str]]
    """The (namespace, name) of tasks indexed before and absent from the listing (deleted while unwatched)."""


class TaskIndex:
    """The served tasks' views by (namespace, cluster); changed only on the event loop.

    ``scopes`` are the namespaces watched, or ``(None,)`` for the whole cluster.
    """

    def __init__(self, scopes: Sequence[str | None] = (None,)) -> None:
        self.scopes = tuple(scopes)
        self._by_cluster: dict[ClusterKey, dict[str, TaskView]] = {}
        self._cluster_of: dict[tuple[str, str], ClusterKey] = {}
        self._listed = {scope: asyncio.Event() for scope in self.scopes}
        self.synced = asyncio.Event()
        """Set once every scope was listed: before, the index may lack tasks that exist."""

    def __len__(self) -> int:
        return len(self._cluster_of)

    def _scope_event(self, namespace: str) -> asyncio.Event:
        """The listed flag of the scope serving ``namespace`` (``synced`` for a namespace none serves)."""
        event = self._listed.get(namespace) or self._listed.get(None)
        return event if event is not None else self.synced

    def listed(self, namespace: str) -> bool:
        """Whether the scope serving ``namespace`` was listed: only then are its clusters' tasks all here."""
        return self._scope_event(namespace).is_set()

    async def wait_listed(self, namespace: str) -> None:
        await self._scope_event(namespace).wait()

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

    def replace(self, scope: str | None, views: Iterable[TaskView]) -> Replaced:
        """Make the scope's part of the index exactly ``views`` (one step)."""
        views = list(views)
        touched: set[ClusterKey] = set()
        before: set[tuple[str, str]] = set()
        for task, key in list(self._cluster_of.items()):
            if scope is None or task[0] == scope:
                del self._cluster_of[task]
                self._drop(task, key)
                touched.add(key)
                before.add(task)
        for view in views:
            self.put(view)
            touched.add((view.namespace, view.cluster))
        if scope in self._listed:
            self._listed[scope].set()
        if all(event.is_set() for event in self._listed.values()):
            self.synced.set()
        return Replaced(touched, before - {(view.namespace, view.name) for view in views})


class TaskWatch:
    """LIST and WATCH the tasks of ``scopes`` on threads, delivering to the event loop."""

    def __init__(
        self, configuration: kubernetes.client.Configuration, scopes: Sequence[str | None], *,
        on_event: TaskEventHandler, on_listing: ListingHandler, on_unreadable: UnreadableHandler,
        watch_seconds: float = _WATCH_SECONDS,
        restarts: Counter | None = None, list_timeout: tuple[float, float] = _LIST_TIMEOUT,
    ) -> None:
        self.scopes = list(scopes)
        self.on_event = on_event
        self.on_listing = on_listing
        self.on_unreadable = on_unreadable
        self.watch_seconds = watch_seconds
        self.list_timeout = list_timeout
        self.restarts = restarts
        """Counts each restart by reason (``expired``, ``list_failed``, ``watch_failed``)."""
        self._api = KubeApi(configuration, concurrency=1)
        self._stop = threading.Event()
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for scope in self.scopes:
            thread = threading.Thread(target=self._run, args=(scope,), name=f"watch-tasks-{scope or 'all'}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self, join_seconds: float = _JOIN_SECONDS) -> None:
        """End the threads: nothing is delivered from now on; open watches end at once.

        Waits up to ``join_seconds`` for the threads (a LIST in flight ends with its answer or its
        timeout; its thread, a daemon, delivers nothing after this).
        """
        self.halt()
        if self._stopped:  # the lost Lease stopped it already; the operator's exit asks again
            return
        self._stopped = True
        self._api.close()
        deadline = time.monotonic() + join_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def halt(self) -> None:
        """Deliver nothing from now on, at once (without closing the connections: :meth:`stop` does)."""
        self._stop.set()

    # -- on the threads --------------------------------------------------------------------------

    def _run(self, scope: str | None) -> None:
        tasks = resource_path(GROUP, VERSION, TASK_PLURAL, scope)
        clusters = resource_path(GROUP, VERSION, CLUSTER_PLURAL, scope)
        backoff = _BACKOFF_START
        # Failures since the watch last worked (delivered an event, or ran until the server ended it
        # after a while; one ended at once with no event failed: EmptyWatchError),
        # not since the last good LIST: a watch refused each time after a good LIST fails forever.
        failures, listed = 0, False
        while not self._stop.is_set():
            reason, progress = "list_failed", [0]
            try:
                version = self._list(scope, tasks, clusters)
                listed, reason = True, "watch_failed"
                while not self._stop.is_set():
                    version = self._watch(tasks, version, progress)
                    failures, backoff = 0, _BACKOFF_START
            except Exception as exc:  # the watch outlives any trouble: LIST again after a pause
                if self._stop.is_set():
                    return
                if progress[0]:
                    failures, backoff = 0, _BACKOFF_START
                if isinstance(exc, WatchExpiredError):
                    reason = "expired"
                if self.restarts is not None:
                    self.restarts.labels(reason).inc()
                failures += 1
                # One expired or dropped watch is routine; a second failure in a row, or any before the
                # first listing (nothing may trust the scope's index until then), is worth a WARNING.
                level = logging.WARNING if failures > 1 or not listed else logging.INFO
                log.log(level, "task watch (%s): %s (%s, %d in a row); listing again in %.1fs",
                        scope or "all namespaces", exc, reason, failures, backoff)
                self._stop.wait(backoff)
                backoff = min(_BACKOFF_CAP, backoff * 2)

    def _list(self, scope: str | None, tasks: str, clusters: str) -> str:
        """LIST tasks, then clusters, and deliver both; the tasks' resourceVersion to watch from."""
        listing = self._api.request_sync("GET", tasks, timeout=self.list_timeout)
        views = [view for item in listing.get("items") or () if (view := _readable(item)) is not None]
        begun = time.monotonic()  # a cluster deleted after this may still be in the listing below
        known = {
            (item["metadata"]["namespace"], item["metadata"]["name"])
            for item in self._api.request_sync("GET", clusters, timeout=self.list_timeout).get("items") or ()
        }
        self._deliver(self._listed, scope, views, known, begun)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, path: str, version: str, progress: list[int]) -> str:
        """One watch from ``version`` until the server ends it; the last version seen.

        ``progress[0]`` counts the events (bookmarks too) it received. One that the server ends
        within :data:`_EMPTY_WATCH_SECONDS` having sent none raises :class:`EmptyWatchError`.
        """
        query = {"allowWatchBookmarks": "true", **({"resourceVersion": version} if version else {})}
        opened, received = time.monotonic(), progress[0]
        for event in self._api.watch_sync(path, query=query, timeout=self.watch_seconds):
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise WatchExpiredError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            progress[0] += 1
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            if (view := _readable(obj)) is not None:
                self._deliver(self._event, kind, view)
            elif (meta := obj.get("metadata") or {}).get("namespace") and meta.get("name"):
                self._deliver(self._unreadable, str(meta["namespace"]), str(meta["name"]))
        if progress[0] == received and time.monotonic() - opened < _EMPTY_WATCH_SECONDS and not self._stop.is_set():
            raise EmptyWatchError("the server ended the watch at once with no event")
        return version

    def _deliver(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed: the operator is gone
                loop.call_soon_threadsafe(callback, *args)

    # -- on the event loop -----------------------------------------------------------------------

    def _listed(self, scope: str | None, views: list[TaskView], clusters: set[ClusterKey], begun: float) -> None:
        if not self._stop.is_set():
            self.on_listing(scope, views, clusters, begun)

    def _event(self, kind: str, view: TaskView) -> None:
        if not self._stop.is_set():
            self.on_event(kind, view)

    def _unreadable(self, namespace: str, name: str) -> None:
        if not self._stop.is_set():
            self.on_unreadable(namespace, name)


def _readable(body: dict[str, Any]) -> TaskView | None:
    """The task's view, or None (and a WARNING naming it) for a task the operator cannot read."""
    try:
        return task_view(body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        meta = body.get("metadata") or {}
        log.warning("skipping task %s/%s: cannot read it (%s: %s)",
                    meta.get("namespace"), meta.get("name"), type(exc).__name__, exc)
        return None


def scopes_of(namespaces: Iterable[str]) -> list[str | None]:
    """The scopes to watch: each namespace served, or the whole cluster when none is named."""
    return list(dict.fromkeys(namespaces)) or [None]
