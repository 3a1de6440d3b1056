"""A Kubernetes API emulator for tests and benchmarks, built on kmock.

The real kube-apiserver is built from source for the e2e tier
(tests/e2e, minutes on first use); the operator's fast integration tests
(tests/operator) and ``make bench-operator`` talk HTTP to
:class:`ApiServerEmulator` instead, a subclass of kmock's
``KubernetesEmulator`` that fills the gaps this project depends on (kmock
keeps objects as plain JSON and leaves these out on purpose):

* ``metadata.uid``, ``resourceVersion`` (one global counter),
  ``generation`` (bumped when ``spec`` changes), ``creationTimestamp``,
  and ``generateName``;
* JSON patches (RFC 6902) besides merge patches;
* optimistic concurrency: a merge patch carrying ``metadata.resourceVersion``
  is refused with ``409 Conflict`` unless it matches the stored object,
  exactly as the real API server does;
* the ``status`` subresource: ``PATCH .../status`` changes only ``status``,
  a create or a patch of the main resource leaves ``status`` alone;
* equality-based label selectors (``a=b``, ``a!=b``, ``a``, ``!a``) and
  equality-based field selectors on any dotted path (``metadata.name``, a
  CRD's selectable ``status.workerRef.pod``) on lists and watches;
* cascading deletion through ``ownerReferences`` (the garbage collector);
* ``201 Created`` on create (the generated client insists on it);
* the events and leases resources declared up front, and ``GET
  /api/v1/namespaces`` (a path kmock cannot parse) answered here.

Fault injection: :attr:`ApiServerEmulator.refuse_create` is a predicate a
test sets to make creates fail the way admission does on a real server (a
``403`` from a ResourceQuota, a ``422`` from validation)::

    emulator.refuse_create = lambda plural, body: (
        (403, "Forbidden", "exceeded quota: gpus") if plural == "pods" else None
    )

It is an emulator, not a conformance target: no admission, no schema
validation, no server-side apply, no ``PUT``. Tests that need those run
against the real control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import dicts, k8s, rendering

__all__ = ["DEFAULT_RESOURCES", "ApiServerEmulator", "EmulatorThread", "Refusal", "match_labels"]

Refusal = tuple[int, str, str]
"""(HTTP status, reason, message) of a refused request, e.g. ``(422, "Invalid", "...")``."""

# Resources every emulator serves: plural path -> (kind, namespaced, has status subresource).
DEFAULT_RESOURCES: dict[str, tuple[str, bool, bool]] = {
    "v1/namespaces": ("Namespace", False, True),
    "v1/pods": ("Pod", True, True),
    "v1/services": ("Service", True, True),
    "v1/events": ("Event", True, False),
    "v1/configmaps": ("ConfigMap", True, False),
    "v1/nodes": ("Node", False, True),
    "coordination.k8s.io/v1/leases": ("Lease", True, False),
    "events.k8s.io/v1/events": ("Event", True, False),
}


def match_fields(obj: Mapping[str, Any], selector: str) -> bool:
    """Whether ``obj`` satisfies an equality-based field selector (``a.b=c``, ``a.b!=c``; any dotted path).

    The API server allows only ``metadata.name``/``metadata.namespace`` and a CRD's
    ``selectableFields``; the emulator evaluates any path. A missing field reads as ``""``.
    """
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, _, value = term.partition("!=" if negate else "=")
        value = value.lstrip("=").strip()  # "a==b" too
        current: Any = obj
        for part in key.strip().split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if (str(current if current is not None else "") == value) == negate:
            return False
    return True


def match_labels(labels: Mapping[str, str], selector: str) -> bool:
    """Whether ``labels`` satisfy an equality-based label selector string."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "==" in term or "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conflict(message: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(status=409, reason="Conflict", message=message, details={})


@attrs.define(kw_only=True)
class ApiServerEmulator(k8s.KubernetesEmulator):
    """kmock's emulator plus the API server semantics listed in the module docstring."""

    _counter: Iterable[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _current_rv: int = attrs.field(default=0, init=False)
    _status_subresources: set[str] = attrs.field(factory=set, init=False)
    _served: set[tuple[str, str, str]] = attrs.field(factory=set, init=False)
    refuse_create: Callable[[str, Mapping[str, Any]], Refusal | None] | None = attrs.field(default=None)
    """Called with (plural, body) before each create; a :data:`Refusal` makes the create fail with it.

    Settable while the server runs (from another thread too): the next create sees it.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for path, (kind, namespaced, status) in DEFAULT_RESOURCES.items():
            self.declare(path, kind=kind, namespaced=namespaced, status=status)

    def declare(
        self,
        path: str,
        *,
        kind: str,
        namespaced: bool = True,
        status: bool = True,
        singular: str | None = None,
        shortnames: Iterable[str] = (),
        categories: Iterable[str] = (),
    ) -> None:
        """Serve a resource, ``group/version/plural`` (``v1/plural`` for the core group)."""
        self.resources[path] = kmock.ResourceInfo(
            kind=kind,
            singular=singular or kind.lower(),
            namespaced=namespaced,
            shortnames=set(shortnames),
            categories=set(categories),
            subresources={"status"} if status else set(),
            verbs={"list", "watch", "get", "create", "patch", "delete"},
        )
        if status:
            self._status_subresources.add(path.rsplit("/", 1)[-1])
        parts = path.split("/")
        group, version, plural = ("", parts[0], parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])
        self._served.add((group, version, plural))

    def declare_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the resource a CustomResourceDefinition manifest describes."""
        spec = crd["spec"]
        for version in spec["versions"]:
            self.declare(
                f"{spec['group']}/{version['name']}/{spec['names']['plural']}",
                kind=spec["names"]["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                status="status" in version.get("subresources", {}),
                singular=spec["names"].get("singular"),
                shortnames=spec["names"].get("shortNames", ()),
                categories=spec["names"].get("categories", ()),
            )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse the cluster-scoped "/api/v1/namespaces" path: serve it here.
        if raw_request.path.rstrip("/") == "/api/v1/namespaces" and raw_request.method == "GET":
            if raw_request.query.get("watch") in ("true", "1"):
                response = aiohttp.web.StreamResponse()
                await response.prepare(raw_request)
                while True:  # nothing ever changes; the client closes the stream
                    await asyncio.sleep(3600)
            names = {ns for (_, ns, _) in self._objects if ns} | {"default"}
            return aiohttp.web.json_response({
                "apiVersion": "v1", "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(self._current_rv)},
                "items": [{"metadata": {"name": ns}} for ns in sorted(names)],
            })
        return await super().__call__(raw_request)

    # -- state changes -------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._current_rv = next(self._counter)  # type: ignore[call-overload]
        return str(self._current_rv)

    async def _handle(self, request: rendering.Request) -> Any:
        resource = request.resource
        if resource is None or resource.plural is None:
            return await super()._handle(request)  # discovery: kmock's own
        if self._key(resource) not in self._served:
            raise k8s.KubernetesResourceNotFoundError()
        action = request.action
        if action == kmock.action.LIST:
            return aiohttp.web.json_response(await self._list(request))
        if action == kmock.action.WATCH:
            return await self._watch(request)
        if action == kmock.action.FETCH:
            obj = self._objects._objects.get((resource, request.namespace, request.name))
            if obj is None or obj.deleted:
                raise k8s.KubernetesObjectNotFoundError()
            return aiohttp.web.json_response(obj.raw)
        if action not in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
            return await super()._handle(request)
        if action != kmock.action.CREATE and request.name is None:
            return await super()._handle(request)
        async with self._lock:
            if action == kmock.action.CREATE:
                return aiohttp.web.json_response(await self._create(request), status=201)
            key = (resource, request.namespace, request.name)
            if action == kmock.action.UPDATE:
                await self._patch(request)
            else:
                await self._delete(resource, request.namespace, request.name)
            return aiohttp.web.json_response(self._objects[key].last.raw)

    @staticmethod
    def _key(resource: Any) -> tuple[str, str, str]:
        return (resource.group or "", resource.version or "", resource.plural or "")

    async def _create(self, request: rendering.Request) -> dict[str, Any]:
        body = dict(request.data or {})
        refuse = self.refuse_create
        refusal = refuse(request.resource.plural or "", body) if refuse is not None else None
        if refusal is not None:
            status, reason, message = refusal
            raise k8s.KubernetesError(status=status, reason=reason, message=message, details={})
        meta = dict(body.get("metadata") or {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            generation=1,
            creationTimestamp=_now(),
        )
        body["metadata"] = meta
        if (request.resource.plural or "") in self._status_subresources:
            body.pop("status", None)  # status is the status subresource's to write
        key = (request.resource, namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise k8s.KubernetesObjectConflictError(
                status=409, reason="AlreadyExists", message=f'"{meta["name"]}" already exists'
            )
        if key in self._objects:
            self._objects[key].create(body)
        else:
            self._objects[key] = body
        raw = self._objects[key].raw
        await self._buses[request.resource].put({"type": "ADDED", "object": raw})
        return raw

    async def _patch(self, request: rendering.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise k8s.KubernetesObjectNotFoundError()
        obj = self._objects[key]
        current = json.loads(json.dumps(obj.raw))
        patch = request.data
        if isinstance(patch, list):  # RFC 6902 JSON patch (kopf uses these for finalizers)
            try:
                new = jsonpatch.apply_patch(current, patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise k8s.KubernetesError(status=422, reason="Invalid", message=str(exc), details={}) from exc
        elif isinstance(patch, Mapping):  # RFC 7386 merge patch
            patch = json.loads(json.dumps(patch))
            wanted_rv = (patch.get("metadata") or {}).pop("resourceVersion", None)
            if wanted_rv is not None and str(wanted_rv) != current["metadata"].get("resourceVersion"):
                raise _conflict(
                    f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": '
                    "the object has been modified; please apply your changes to the latest version "
                    "and try again"
                )
            new = dict(dicts.merge_patch_dict(current, patch))
        else:
            raise k8s.KubernetesError(status=415, reason="UnsupportedMediaType", message="unknown patch", details={})
        plural = request.resource.plural or ""
        if request.subresource == "status":
            new = {**current, "status": new.get("status")}
        elif plural in self._status_subresources:
            new["status"] = current.get("status")
        if new.get("status") is None:
            new.pop("status", None)
        meta = dict(new.get("metadata") or {})
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "name", "namespace"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = self._next_rv()
        if new.get("spec") != current.get("spec"):
            meta["generation"] = int(current["metadata"].get("generation", 1)) + 1
        new["metadata"] = meta
        obj.history.append(new)
        await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._really_delete(request.resource, request.namespace, request.name)

    async def _delete(self, resource: Any, namespace: str | None, name: str) -> None:
        key = (resource, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            raise k8s.KubernetesObjectNotFoundError()
        obj = self._objects[key]
        meta = obj.raw.get("metadata", {})
        if meta.get("deletionTimestamp"):
            return
        if meta.get("finalizers"):
            obj.patch({"metadata": {"deletionTimestamp": _now(), "resourceVersion": self._next_rv()}})
            await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
            return
        await self._really_delete(resource, namespace, name)

    async def force_delete(self, plural: str, namespace: str, name: str) -> None:
        """Remove an object at once, finalizers or not.

        What a user gets by removing the finalizers by hand and deleting: the
        watchers see DELETED with no deletion phase before it.
        """
        for resource, ns, nm in list(self._objects):
            if (resource.plural, ns, nm) == (plural, namespace, name) and not self._objects[resource, ns, nm].deleted:
                await self._really_delete(resource, ns, nm)
                return
        raise KeyError(f"no {plural} {namespace}/{name}")

    async def _really_delete(self, resource: Any, namespace: str | None, name: str) -> None:
        obj = self._objects[resource, namespace, name]
        obj.patch({"metadata": {"resourceVersion": self._next_rv()}})
        raw = obj.raw
        obj.delete()
        await self._buses[resource].put({"type": "DELETED", "object": raw})
        uid = raw.get("metadata", {}).get("uid")
        # Garbage collection: delete the dependents this object owned.
        dependents = [
            (res, ns, nm)
            for (res, ns, nm), dep in list(self._objects.items())
            if not dep.deleted
            and any(ref.get("uid") == uid for ref in dep.raw.get("metadata", {}).get("ownerReferences", []))
        ]
        for res, ns, nm in dependents:
            await self._delete(res, ns, nm)

    # -- reads ---------------------------------------------------------------------------------
    # Served here rather than by kmock's reactions: a direct lookup instead of a scan that
    # evaluates every object (and every reaction) per request, which made each request cost
    # milliseconds per stored object.

    def _visible(self, request: rendering.Request, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        selector = request.params.get("labelSelector")
        if selector and not match_labels(meta.get("labels") or {}, selector):
            return False
        fields = request.params.get("fieldSelector")
        return not fields or match_fields(obj, fields)

    def _current(self, request: rendering.Request) -> list[dict[str, Any]]:
        wanted = self._key(request.resource)
        items = []
        for (resource, _, _), obj in self._objects._objects.items():
            if self._key(resource) == wanted and not obj.deleted:
                raw = obj.raw
                if self._visible(request, raw):
                    items.append(raw)
        return items

    async def _list(self, request: rendering.Request) -> dict[str, Any]:
        async with self._lock:
            items = self._current(request)
            version = str(self._current_rv)
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}

    async def _watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            items = self._current(request)
        raw_request = request._raw_request
        assert raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        seen: set[str | None] = set()

        async def send(event: Mapping[str, Any]) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        async def stream() -> None:
            for item in items:
                seen.add(item["metadata"].get("uid"))
                await send({"type": "ADDED", "object": item})
            async for event in bus.stream(since=mark):
                obj = event.get("object", {})
                uid = obj.get("metadata", {}).get("uid")
                if self._visible(request, obj):
                    seen.add(uid)
                    await send(event)
                elif uid in seen:  # like the API server: leaving the selector reads as DELETED
                    seen.discard(uid)
                    await send({"type": "DELETED", "object": obj})

        try:
            await asyncio.wait_for(stream(), timeout=timeout)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            await bus.unmark(mark)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


class EmulatorThread:
    """An :class:`ApiServerEmulator` on loopback, served from its own thread and event loop.

    Keeps the server's request handlers out of the caller's event loop (kopf, for one, waits
    for every task spawned while it ran before it exits). Use as a context manager::

        with EmulatorThread(crds) as server:
            client = ... server.url ...
    """

    def __init__(self, crds: Iterable[Mapping[str, Any]] = ()) -> None:
        self.crds = list(crds)
        self.url = ""
        self.emulator: ApiServerEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-emulator", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the caller of __enter__
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ApiServerEmulator() as emulator, kmock.Server(emulator) as server:
            for crd in self.crds:
                emulator.declare_crd(crd)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._started.wait(timeout=30)
        if self._error is not None or not self.url:
            raise RuntimeError(f"the API emulator did not start: {self._error!r}")
        return self

    def force_delete(self, plural: str, namespace: str, name: str) -> None:
        """:meth:`ApiServerEmulator.force_delete`, called from any thread."""
        assert self._loop is not None and self.emulator is not None
        asyncio.run_coroutine_threadsafe(self.emulator.force_delete(plural, namespace, name), self._loop).result(30)

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
