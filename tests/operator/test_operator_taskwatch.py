"""The operator's own task watch (:mod:`legacygpu.operator.taskwatch`) and what the operator does with it.

The watch runs against a scripted API server on loopback (real HTTP, served by uvicorn): each
LIST and each WATCH answers what the test scripted, so the test can expire a watch (an ``ERROR``
event with 410 Gone), cut a connection mid-stream, or end a watch cleanly, none of which the
emulator does on demand. The handlers and the cluster loop run with a stand-in for the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import serve_in_thread
from operator_harness import eventually

from legacygpu.core.kube.client import load_configuration
from legacygpu.core.kube.contract import API_VERSION, TASK_KIND
from legacygpu.operator import cluster_handlers, task_handlers, taskwatch
from legacygpu.operator.config import OperatorConfig
from legacygpu.operator.runtime import OperatorRuntime
from legacygpu.operator.taskstate import TaskView, task_view
from legacygpu.operator.taskwatch import TaskIndex, TaskWatch

NS = "ns"
TASKS = f"/apis/{API_VERSION}/namespaces/{NS}/inferencetasks"
CLUSTERS = f"/apis/{API_VERSION}/namespaces/{NS}/inferenceclusters"


def task(name: str, rv: str, cluster: str = "c", phase: str = "Succeeded", namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": TASK_KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": rv,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"clusterRef": cluster, "model": "digits"},
        "status": {"phase": phase},
    }


def view(name: str, rv: str = "1", cluster: str = "c", phase: str = "Succeeded", namespace: str = NS) -> TaskView:
    return task_view(task(name, rv, cluster, phase, namespace))


@dataclass
class Watch:
    """One scripted watch: the events it sends, then how it ends."""

    events: list[dict[str, Any]]
    ending: str = "end"
    """``end`` (the server closes the stream cleanly), ``drop`` (the connection is cut mid-stream)
    or ``hang`` (nothing more until the client goes)."""


@dataclass
class ScriptedApi:
    """An ASGI app answering LISTs and WATCHes of tasks (and LISTs of clusters) from a script."""

    listings: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    """(resourceVersion, items) per task LIST, in order; the last repeats."""
    watches: list[Watch] = field(default_factory=list)
    """Per task WATCH, in order; once they run out, watches hang."""
    clusters: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """("list" | "watch" | "clusters", query) per request, in order."""
    list_failures: list[str] = field(default_factory=list)
    """How the first task LISTs fail, in order: ``500`` (an error status), ``hang`` (no answer) or ``""``
    (none: the LIST answers)."""
    url: str = ""
    """Where it serves (set by the :func:`api` fixture)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
        if scope["path"] == CLUSTERS:
            self.requests.append(("clusters", query))
            await _json(send, {"metadata": {"resourceVersion": "1"}, "items": self.clusters})
        elif scope["path"] == TASKS and query.get("watch") == "true":
            self.requests.append(("watch", query))
            script = self.watches.pop(0) if self.watches else Watch([], "hang")
            await self._stream(send, receive, script)
        elif scope["path"] == TASKS:
            self.requests.append(("list", query))
            failure = self.list_failures.pop(0) if self.list_failures else ""
            if failure:
                if failure == "hang":
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    return
                await _json(send, {"kind": "Status", "code": 500}, status=500)
                return
            rv, items = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
            await _json(send, {"metadata": {"resourceVersion": rv}, "items": items})
        else:
            await _json(send, {"kind": "Status", "code": 404}, status=404)

    async def _stream(self, send: Any, receive: Any, script: Watch) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        for event in script.events:
            await send({"type": "http.response.body", "body": json.dumps(event).encode() + b"\n", "more_body": True})
        if script.ending == "drop":
            raise RuntimeError("connection cut on purpose")  # uvicorn closes it without the final chunk
        if script.ending == "hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _json(send: Any, body: Any, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    """The scripted API server, serving on loopback at its ``url``."""
    scripted = ScriptedApi()
    with serve_in_thread(scripted, lifespan="on") as url:
        scripted.url = url
        yield scripted


@dataclass
class Recorder:
    """Delivers to the operator's own handlers (:mod:`legacygpu.operator.task_handlers`, on a runtime with a
    stand-in API) and notes what each delivery left in its task index."""

    rt: OperatorRuntime = field(default_factory=lambda: runtime()[0])
    seen: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def index(self) -> TaskIndex:
        return self.rt.tasks

    def names(self) -> list[str]:
        return sorted(v.name for v in self.index.get((NS, "c")))

    def listings(self) -> int:
        """How many listings were delivered."""
        return sum(kind == "LIST" for kind, _ in self.seen)

    def event(self, kind: str, view: TaskView) -> None:
        task_handlers.on_task_event(self.rt, kind, view)
        self.seen.append((kind, self.names()))

    def unreadable(self, namespace: str, name: str) -> None:
        task_handlers.on_task_unreadable(self.rt, namespace, name)
        self.seen.append(("UNREADABLE", self.names()))

    def listing(self, scope: str | None, views: list[TaskView], clusters: set[tuple[str, str]], begun: float) -> None:
        task_handlers.on_task_listing(self.rt, scope, views, clusters, begun)
        self.seen.append(("LIST", self.names()))


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    yield recorder
    await recorder.rt.shutdown()


StartWatch = Callable[..., TaskWatch]
"""Starts a :class:`TaskWatch` with the given options (see the :func:`start_watch` fixture)."""


@pytest.fixture
async def start_watch(api: ScriptedApi, recorder: Recorder) -> AsyncIterator[StartWatch]:
    """Starts watches of the scripted server that feed ``recorder``; each is stopped after the test."""
    started: list[TaskWatch] = []

    def start(**options: Any) -> TaskWatch:
        watch = TaskWatch(
            load_configuration(server=api.url), [NS], on_event=recorder.event, on_listing=recorder.listing,
            on_unreadable=recorder.unreadable, **options,
        )
        watch.start()
        started.append(watch)
        return watch

    yield start
    for watch in started:
        watch.stop()


async def until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    await eventually(predicate, timeout=timeout, interval=0.02, what=what)


def watch_versions(api: ScriptedApi) -> list[str | None]:
    return [q.get("resourceVersion") for kind, q in api.requests if kind == "watch"]


async def test_list_then_watch_and_a_410_lists_again_replacing_the_index(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch,
) -> None:
    api.listings = [("10", [task("a", "5"), task("b", "6")]), ("21", [task("a", "11"), task("d", "20")])]
    api.watches = [Watch([
        {"type": "MODIFIED", "object": task("a", "11")},
        {"type": "ADDED", "object": task("c", "12")},
        {"type": "DELETED", "object": task("b", "13")},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}},
    ])]
    assert not recorder.index.synced.is_set()
    start_watch()
    await until(lambda: recorder.listings() == 2 and len(watch_versions(api)) == 2, "the second LIST and its watch")
    assert recorder.seen == [
        ("LIST", ["a", "b"]),  # the list comes first: nothing is delivered before it
        ("MODIFIED", ["a", "b"]),
        ("ADDED", ["a", "b", "c"]),
        ("DELETED", ["a", "c"]),  # a DELETED event removes the task
        ("LIST", ["a", "d"]),  # after the 410, the new listing replaces the index: c went while unwatched
    ]
    assert recorder.index.synced.is_set()
    assert [v.resource_version for v in recorder.index.get((NS, "c")) if v.name == "a"] == ["11"]
    # Each watch starts from its listing's version, with bookmarks.
    assert watch_versions(api) == ["10", "21"]
    assert all(q.get("allowWatchBookmarks") == "true" for kind, q in api.requests if kind == "watch")


async def test_a_dropped_connection_lists_again(api: ScriptedApi, recorder: Recorder, start_watch: StartWatch) -> None:
    api.listings = [("10", [task("a", "5")]), ("30", [task("a", "5"), task("e", "12"), task("f", "25")])]
    api.watches = [Watch([{"type": "ADDED", "object": task("e", "12")}], ending="drop")]
    start_watch()
    await until(lambda: recorder.listings() == 2 and len(watch_versions(api)) == 2, "a LIST after the cut")
    assert recorder.seen[-1] == ("LIST", ["a", "e", "f"])
    assert watch_versions(api) == ["10", "30"]


async def test_a_watch_the_server_ends_resumes_from_the_last_version_without_listing(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch,
) -> None:
    api.listings = [("10", [task("a", "5")])]
    api.watches = [Watch([
        {"type": "MODIFIED", "object": task("a", "15")},
        {"type": "BOOKMARK", "object": {"kind": TASK_KIND, "metadata": {"resourceVersion": "30"}}},
    ])]
    start_watch()
    await until(lambda: len(watch_versions(api)) == 2, "the second watch")
    assert recorder.listings() == 1
    assert watch_versions(api) == ["10", "30"]  # the bookmark's version, not a relist
    assert [kind for kind, _ in recorder.seen] == ["LIST", "MODIFIED"]  # a bookmark is no task event


async def test_stop_ends_an_open_watch_and_delivers_nothing_more(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch,
) -> None:
    api.listings = [("10", [task("a", "5")])]
    watch = start_watch()
    await until(lambda: len(watch_versions(api)) == 1 and recorder.names() == ["a"], "the listing and the watch")
    watch.stop()
    assert not any(t.is_alive() for t in watch._threads)  # stop() waits (briefly) for the threads
    watch._listed(NS, [view("z")], set(), 0.0)  # a delivery queued before the stop, run after it
    assert recorder.names() == ["a"]


def test_index_replace_is_per_scope_and_synced_once_every_scope_is_listed() -> None:
    index = TaskIndex(["one", "two"])
    index.replace("one", [view("a", namespace="one")])
    assert not index.synced.is_set()  # "two" is not listed yet: nothing may trust the index
    index.put(view("b", namespace="two"))
    replaced = index.replace("two", [])
    assert index.synced.is_set()
    assert replaced.touched == {("two", "c")} and replaced.removed == {("two", "b")}
    assert [v.name for v in index.get(("one", "c"))] == ["a"] and index.get(("two", "c")) == []
    # A task whose clusterRef changed moves; put says where it was.
    assert index.put(view("a", "2", cluster="d", namespace="one")) == ("one", "c")
    assert index.get(("one", "c")) == [] and len(index) == 1
    assert index.remove("one", "a") == ("one", "d") and len(index) == 0
    assert index.remove("one", "a") is None


# -- what the operator does with the deliveries ------------------------------------------------------


class LookupApi:
    """The calls an orphan check makes: no task and no cluster exist (the check ends at once)."""

    def __init__(self) -> None:
        self.configuration = None
        self.task_lookups: list[str] = []

    async def get_task(self, namespace: str, name: str) -> dict[str, Any]:
        from legacygpu.core.kube.errors import ApiNotFoundError

        self.task_lookups.append(name)
        raise ApiNotFoundError("gone")


def runtime() -> tuple[OperatorRuntime, LookupApi]:
    api = LookupApi()
    config = OperatorConfig(namespaces=(NS,), finished_task_ttl_seconds=None)
    return OperatorRuntime(config=config, api=api), api  # type: ignore[arg-type]


async def test_events_poke_known_clusters_and_settle_orphans() -> None:
    rt, api = runtime()
    task_handlers.on_task_listing(rt, NS, [view("a", phase="Pending"), view("o", cluster="gone", phase="Pending")],
                                  {(NS, "c")}, 0.0)
    assert rt.tasks.synced.is_set() and rt.waker((NS, "c")).is_set()
    assert not rt.waker((NS, "gone")).is_set()
    await asyncio.sleep(0.05)
    assert api.task_lookups == ["o"]  # the orphan (cluster unknown) is checked with the API
    rt.waker((NS, "c")).clear()
    rt.wrote_task(view("a", "1", phase="Pending"), view("a", "2", phase="Scheduled"))
    task_handlers.on_task_event(rt, "DELETED", view("a", "1"))
    assert rt.tasks.get((NS, "c")) == [] and (NS, "a") not in rt.task_overlay
    assert rt.waker((NS, "c")).is_set()
    rt.waker((NS, "c")).clear()
    task_handlers.on_task_event(rt, "ADDED", view("b", phase="Pending"))
    assert rt.waker((NS, "c")).is_set() and [v.name for v in rt.tasks.get((NS, "c"))] == ["b"]
    task_handlers.on_task_event(rt, "MODIFIED", view("o2", cluster="gone", phase="Pending"))
    await asyncio.sleep(0.05)
    assert api.task_lookups == ["o", "o2"]
    # A task an event made unreadable is forgotten, as if deleted.
    rt.waker((NS, "c")).clear()
    rt.wrote_task(view("b", "1", phase="Pending"), view("b", "2", phase="Scheduled"))
    task_handlers.on_task_unreadable(rt, NS, "b")
    assert rt.tasks.get((NS, "c")) == [] and (NS, "b") not in rt.task_overlay
    assert rt.waker((NS, "c")).is_set()
    await rt.shutdown()


class Stopped:
    """The part of kopf's ``stopped`` flag the cluster loop uses."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason = None

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


class Memo:
    def __init__(self, rt: OperatorRuntime) -> None:
        self.runtime = rt


async def test_cluster_loop_waits_for_the_listing_and_never_loses_a_poke(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, _ = runtime()
    key = (NS, "c")
    passes: list[list[str]] = []
    poke_during = asyncio.Event()

    async def one_pass(rt_: OperatorRuntime, body: Any, *, tasks: Any, pods: Any, logger: Any) -> float:
        passes.append(sorted(t.name for t in tasks))
        if len(passes) == 1:
            await poke_during.wait()
            rt.poke(key)  # a task event arriving while the pass awaits the API
            await asyncio.sleep(0)
        return 3600.0  # nothing timed: only a poke may start the next pass

    monkeypatch.setattr(cluster_handlers, "reconcile_cluster", one_pass)
    stopped = Stopped()
    loop = asyncio.ensure_future(cluster_handlers.cluster_loop(
        body={}, namespace=NS, name="c", stopped=stopped, memo=Memo(rt), logger=logging.getLogger("test"),
        legacygpu_pods={},
    ))
    await asyncio.sleep(0.1)
    assert passes == []  # no pass before the tasks are listed: the index would look empty
    task_handlers.on_task_listing(rt, NS, [view("a", phase="Pending")], {key}, 0.0)
    await until(lambda: len(passes) == 1, "the first pass")
    poke_during.set()
    await until(lambda: len(passes) == 2, "a second pass for the poke made during the first")
    assert passes == [["a"], ["a"]]
    stopped.event.set()
    await asyncio.wait_for(loop, 5)


# -- review findings: each test fails without its mend ----------------------------------------------


WATCH_LOG = "legacygpu.operator.taskwatch"


def restarts(watch: TaskWatch, reason: str) -> float:
    assert watch.restarts is not None
    return float(watch.restarts.labels(reason)._value.get())


def counter() -> Any:
    from legacygpu.operator.metrics import OperatorMetrics

    return OperatorMetrics().task_watch_restarts


async def test_a_list_that_gets_no_answer_times_out_and_is_retried_with_a_warning(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch, caplog: pytest.LogCaptureFixture,
) -> None:
    api.list_failures = ["hang"] * 4  # urllib3 itself tries a GET that timed out again, up to three times
    api.listings = [("10", [task("a", "5")])]
    with caplog.at_level(logging.INFO, logger="legacygpu.operator.taskwatch"):
        watch = start_watch(restarts=counter(), list_timeout=(1.0, 0.3))
        await until(lambda: recorder.listings() == 1, "a listing after the LISTs that got no answer")
    assert recorder.names() == ["a"] and recorder.index.synced.is_set()
    failed = restarts(watch, "list_failed")
    assert failed >= 1 and restarts(watch, "expired") == 0
    # Not listed yet: every failure is a WARNING (the operator is not ready until the first listing).
    warnings = [r for r in caplog.records if r.name == WATCH_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == failed and all("list_failed" in r.getMessage() for r in warnings)


async def test_one_expired_watch_is_routine_a_watch_failing_again_and_again_warns(
    api: ScriptedApi, start_watch: StartWatch, caplog: pytest.LogCaptureFixture,
) -> None:
    api.listings = [("10", [task("a", "5")])]
    expired = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "old"}}
    modified = {"type": "MODIFIED", "object": task("a", "11")}
    # Each watch expires; only the first and the last delivered an event first.
    api.watches = [Watch([modified, expired]), Watch([expired]), Watch([expired]), Watch([modified, expired])]
    api.list_failures = ["", "500"]  # the LIST after the first expiry fails
    with caplog.at_level(logging.INFO, logger="legacygpu.operator.taskwatch"):
        watch = start_watch(restarts=counter())
        await until(lambda: len(watch_versions(api)) == 5, "four expired watches and a failed LIST")
    assert restarts(watch, "expired") == 4 and restarts(watch, "list_failed") == 1
    logged = [(r.levelno, "expired" in r.getMessage()) for r in caplog.records if r.name == WATCH_LOG]
    assert logged == [
        (logging.INFO, True),  # a watch that worked, then expired: routine
        (logging.WARNING, False),  # the LIST after it failed too: two in a row
        (logging.WARNING, True),  # the next watch expired at once, although its LIST was good: three
        (logging.WARNING, True),  # and again: a watch that never works keeps warning
        (logging.INFO, True),  # this one delivered an event first: routine again
    ]


async def test_a_task_the_operator_cannot_read_is_skipped_not_relisted(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch, caplog: pytest.LogCaptureFixture,
) -> None:
    unreadable = task("bad", "6", phase="Bogus")
    bad_priority = task("worse", "13")
    bad_priority["spec"]["priority"] = "high"
    api.listings = [("10", [task("a", "5"), unreadable])]
    api.watches = [Watch([
        {"type": "ADDED", "object": bad_priority},
        {"type": "ADDED", "object": task("b", "14")},
    ])]
    with caplog.at_level(logging.WARNING, logger="legacygpu.operator.taskwatch"):
        start_watch()
        await until(lambda: recorder.names() == ["a", "b"], "the readable tasks")
        await asyncio.sleep(0.2)
    assert recorder.listings() == 1  # neither bad task made the watch list again
    assert [kind for kind, _ in recorder.seen] == ["LIST", "UNREADABLE", "ADDED"]
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{NS}/bad" in m for m in skipped) and any(f"{NS}/worse" in m for m in skipped), skipped


async def test_a_watch_event_that_makes_a_task_unreadable_drops_it_from_the_index(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch,
) -> None:
    # Kept, the old view would steer writes that 409 (each one pokes another pass) and, deleted, hold a slot.
    api.listings = [("10", [task("a", "5"), task("b", "6"), task("d", "7")])]
    gone = task("d", "12", phase="Bogus")
    api.watches = [Watch([
        {"type": "MODIFIED", "object": task("a", "11", phase="Bogus")},
        {"type": "DELETED", "object": gone},
        {"type": "ADDED", "object": task("c", "13")},
    ])]
    start_watch()
    await until(lambda: recorder.names() == ["b", "c"], "the unreadable tasks dropped")
    assert recorder.listings() == 1


async def test_a_watch_the_server_ends_at_once_with_no_event_is_reopened_after_a_pause(
    api: ScriptedApi, recorder: Recorder, start_watch: StartWatch, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy that cuts each watch as it opens: reopened at once, that is a hot loop of requests.
    monkeypatch.setattr(taskwatch, "_EMPTY_WATCH_SECONDS", 10.0)  # "at once" even on a loaded machine
    api.listings = [("10", [task("a", "5")])]
    api.watches = [Watch([], "end"), Watch([], "end")]
    watch = start_watch(restarts=counter())
    await until(lambda: restarts(watch, "watch_failed") == 2 and recorder.listings() == 3, "two failed watches")
    assert [kind for kind, _ in api.requests if kind != "clusters"][:5] == ["list", "watch", "list", "watch", "list"]


async def test_a_closed_api_ends_a_watch_that_was_still_opening(api: ScriptedApi) -> None:
    """close() ran while the watch was being opened (its stream not registered yet): it ends once open."""
    from legacygpu.core.kube.client import KubeApi

    kube = KubeApi(load_configuration(server=api.url), concurrency=1)
    kube.close()

    def drain() -> list[dict[str, Any]]:
        return list(kube.watch_sync(TASKS, timeout=30))

    events = await asyncio.wait_for(asyncio.to_thread(drain), 5)  # scripted watches hang: without the flag, 30 s
    assert events == [] and [kind for kind, _ in api.requests] == ["watch"]


def test_index_scopes_are_trusted_one_by_one() -> None:
    index = TaskIndex(["one", "two"])
    assert not index.listed("one") and not index.listed("two")
    index.replace("one", [])
    assert index.listed("one") and not index.listed("two") and not index.synced.is_set()
    whole = TaskIndex([None])
    assert not whole.listed("any")
    whole.replace(None, [])
    assert whole.listed("any") and whole.synced.is_set()


async def test_a_listing_taken_before_a_cluster_was_deleted_does_not_revive_it() -> None:
    """The reviewer's repro: the LIST saw the cluster; its DELETED event was handled before the listing."""
    import time

    rt, api = runtime()
    await cluster_handlers.on_cluster_event(type=None, namespace=NS, name="c", memo=Memo(rt))
    assert (NS, "c") in rt.clusters
    begun = time.monotonic()  # the watch thread is about to LIST clusters: c is still there
    await cluster_handlers.on_cluster_event(type="DELETED", namespace=NS, name="c", memo=Memo(rt))
    task_handlers.on_task_listing(rt, NS, [], {(NS, "c")}, begun)  # the listing lands after the deletion
    assert (NS, "c") not in rt.clusters, "deleted cluster re-added by a stale listing"
    task_handlers.on_task_event(rt, "ADDED", view("late", cluster="c", phase="Pending"))
    await asyncio.sleep(0.05)
    assert api.task_lookups == ["late"]  # the orphan check runs (it fails the task ClusterNotFound)
    # A listing that began after the deletion and still finds the cluster: it was created again.
    task_handlers.on_task_listing(rt, NS, [], {(NS, "c")}, time.monotonic())
    assert (NS, "c") in rt.clusters
    await rt.shutdown()


async def test_cluster_events_keep_the_known_clusters() -> None:
    rt, _ = runtime()
    await cluster_handlers.on_cluster_event(type=None, namespace=NS, name="c", memo=Memo(rt))
    assert rt.clusters == {(NS, "c")} and rt.waker((NS, "c")).is_set()
    await cluster_handlers.on_cluster_event(type="DELETED", namespace=NS, name="c", memo=Memo(rt))
    assert rt.clusters == set()
    await cluster_handlers.on_cluster_event(type="ADDED", namespace=NS, name="c", memo=Memo(rt))
    assert rt.clusters == {(NS, "c")} and rt.clusters_deleted_at == {}


async def test_a_listing_drops_the_overlay_of_tasks_deleted_while_unwatched() -> None:
    rt, _ = runtime()
    task_handlers.on_task_listing(rt, NS, [view("a", phase="Pending"), view("b", phase="Pending")], {(NS, "c")}, 0.0)
    rt.wrote_task(view("a", "1", phase="Pending"), view("a", "2", phase="Scheduled"))
    rt.wrote_task(view("b", "1", phase="Pending"), view("b", "2", phase="Scheduled"))
    task_handlers.on_task_listing(rt, NS, [view("b", "2", phase="Scheduled")], {(NS, "c")}, 0.0)
    assert set(rt.task_overlay) == {(NS, "b")}  # a went while no watch was open: no DELETED event for it


async def test_nothing_is_handled_once_the_runtime_closes() -> None:
    rt, api = runtime()
    await rt.shutdown()  # a stop, or a lost Lease
    task_handlers.on_task_listing(rt, NS, [view("o", cluster="gone", phase="Pending")], set(), 0.0)
    task_handlers.on_task_event(rt, "ADDED", view("o2", cluster="gone", phase="Pending"))
    task_handlers.settle_orphan(rt, view("o3", cluster="gone", phase="Pending"))
    await asyncio.sleep(0.05)
    assert api.task_lookups == [] and len(rt.tasks) == 0 and not rt.background


async def test_the_finalizer_waits_for_its_namespace_listing_only() -> None:
    import kopf

    config = OperatorConfig(namespaces=("one", "two"), finished_task_ttl_seconds=None)
    rt = OperatorRuntime(config=config, api=LookupApi())  # type: ignore[arg-type]

    async def finalize(namespace: str) -> None:
        await cluster_handlers.on_cluster_delete(
            body={}, namespace=namespace, name="c", memo=Memo(rt), logger=logging.getLogger("test"),
            legacygpu_pods={},
        )

    with pytest.raises(kopf.TemporaryError, match="not listed yet"):
        await finalize("one")  # before the listing, the index would show no task to fail
    task_handlers.on_task_listing(rt, "one", [view("done", namespace="one")], {("one", "c")}, 0.0)
    await finalize("one")  # "one" is listed ("two" is not): its only task is finished, nothing to fail
    with pytest.raises(kopf.TemporaryError, match="not listed yet"):
        await finalize("two")


async def test_a_cluster_loop_waits_for_its_own_namespace_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    config = OperatorConfig(namespaces=("one", "two"), finished_task_ttl_seconds=None)
    rt = OperatorRuntime(config=config, api=LookupApi())  # type: ignore[arg-type]
    passes: list[str] = []

    async def one_pass(rt_: OperatorRuntime, body: Any, *, tasks: Any, pods: Any, logger: Any) -> float:
        passes.append(body["ns"])
        return 3600.0

    monkeypatch.setattr(cluster_handlers, "reconcile_cluster", one_pass)
    loops = {ns: (Stopped(), ns) for ns in ("one", "two")}
    running = [asyncio.ensure_future(cluster_handlers.cluster_loop(
        body={"ns": ns}, namespace=ns, name="c", stopped=stopped, memo=Memo(rt), logger=logging.getLogger("test"),
        legacygpu_pods={},
    )) for stopped, ns in loops.values()]
    task_handlers.on_task_listing(rt, "one", [], set(), 0.0)
    await until(lambda: passes == ["one"], "the pass of the listed namespace's cluster")
    await asyncio.sleep(0.1)
    assert passes == ["one"] and not rt.tasks.synced.is_set()  # "two" waits for its own listing
    for stopped, _ in loops.values():
        stopped.event.set()
    await asyncio.wait_for(asyncio.gather(*running), 5)


def test_served_namespaces_are_stripped_and_patterns_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each namespace is watched by its path: " b" or "team-*" would be refused (404) forever."""
    from click.testing import CliRunner

    import legacygpu.operator.app as app
    from legacygpu.cli import main

    configs: list[OperatorConfig] = []

    async def run(config: OperatorConfig, *_: Any, **__: Any) -> None:
        configs.append(config)

    monkeypatch.setattr(app, "run_operator", run)
    base = ["operator", "run", "--server", "http://127.0.0.1:9", "--no-metrics"]
    result = CliRunner().invoke(main, base, env={"LEGACYGPU_OPERATOR_NAMESPACES": "a, b,,c"})
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*base, "--namespace", " d ", "--namespace", "e,f"])
    assert result.exit_code == 0, result.output
    assert [c.namespaces for c in configs] == [("a", "b", "c"), ("d", "e", "f")]
    for bad in ("team-*", "Upper", "a_b", "x" * 64):
        result = CliRunner().invoke(main, [*base, "--namespace", bad])
        assert result.exit_code == 2 and f"namespace {bad!r} is not a namespace name" in result.output, result.output
    assert len(configs) == 2
    with pytest.raises(ValueError, match="not a namespace name"):
        OperatorConfig(namespaces=("ok", " b"))
