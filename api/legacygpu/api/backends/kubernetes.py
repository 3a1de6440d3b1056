"""The facade's Kubernetes backend: the ``/cluster/*`` API over InferenceTasks and worker Pods.

Chosen with ``LEGACYGPU_CLUSTER_BACKEND=kubernetes``; the facade then serves
one InferenceCluster (``LEGACYGPU_KUBE_CLUSTER`` in ``LEGACYGPU_KUBE_NAMESPACE``)
of the API server that ``KUBECONFIG`` names (read when the facade starts; it
wins over the in-cluster service account, as for kubectl), else of the cluster
it runs in, else of ``~/.kube/config``; and keeps no state of its own:

* a task submitted here becomes an InferenceTask (id = object name); the
  operator and the workers take it from there, exactly as for ``kubectl
  apply``; cancelling sets ``spec.cancel``;
* reads come from a cache of the namespace's tasks, the cluster's worker
  Pods and the InferenceCluster itself, kept by list-then-watch loops (an
  informer), so listing is cheap, a change of the cluster's spec shows at
  once, and every change also goes out on the WebSocket event stream
  (``task.created``, ``task.updated``, ``worker.updated``) as in local mode,
  plus ``task.deleted`` when an InferenceTask is deleted (by its
  ``ttlSecondsAfterFinished`` or by hand: the local backend never deletes);
* a submit while the InferenceCluster does not exist (or is being deleted)
  answers 409;
* workers are the cluster's Pods: their device and counts come from the stats
  annotation each worker publishes; ``drain`` annotates the Pod and the
  operator stops placing tasks there;
* the worker-facing endpoints (register, heartbeat, completions) answer
  409: Kubernetes workers watch their tasks instead;
* ``/v2`` requests go to the Ready worker pods of the cluster, found from the
  same pod cache (:meth:`KubernetesBackend.serving_endpoints`, built by
  :func:`legacygpu.api.discovery.pod_endpoint`).

Responses use the same schemas as the local backend, so the CLI and the
dashboard cannot tell the two apart. The Kubernetes contract (field names,
labels) comes from :mod:`legacygpu.core.kube.contract`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import kubernetes

from legacygpu.api.backends.records import percentile, task_public
from legacygpu.api.discovery import ServingEndpoint, pod_endpoint
from legacygpu.api.events import EventBus
from legacygpu.api.metrics import Metrics
from legacygpu.api.schemas import (
    CompletionAnswer,
    DeviceInfoPublic,
    Heartbeat,
    HeartbeatReply,
    ModelPublic,
    TaskCompletion,
    TaskCreate,
    TaskPublic,
    WorkerPublic,
    WorkerRegister,
    WorkerRegistered,
)
from legacygpu.core.config import Settings
from legacygpu.core.errors import ConflictError, NotFoundError, PayloadTooLargeError, ValidationError
from legacygpu.core.kube.client import KubeApi, load_configuration
from legacygpu.core.kube.contract import (
    ANNOTATION_DRAIN,
    ANNOTATION_WORKER_STATS,
    CLUSTER_PLURAL,
    GROUP,
    LABEL_CLUSTER,
    TASK_KIND,
    TASK_PLURAL,
    VERSION,
    now_utc,
    parse_time,
    task_record,
)
from legacygpu.core.kube.errors import ApiError, ApiNotFoundError
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.tasks import ASSIGNED_PHASES, TERMINAL_PHASES, Phase, is_terminal
from legacygpu.core.tensors import validate_inputs

__all__ = ["KubernetesBackend"]

log = logging.getLogger(__name__)

_WATCH_SECONDS = 30.0
MAX_TASK_BYTES = 1024 * 1024
"""Largest InferenceTask (JSON) the facade creates: etcd refuses requests over 1.5 MiB by default, and the
status (results up to the inline limit) must still fit beside the inputs."""
_BY_REFERENCE = "pass large inputs by reference instead: spec.inputsUri (an http(s) URL, or configmap://NAME/KEY)"


def _version(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


class KubernetesBackend:
    """A :class:`~legacygpu.api.backends.base.ClusterBackend` backed by the custom resources."""

    name = "kubernetes"

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        configuration: kubernetes.client.Configuration | None = None,
    ) -> None:
        self.settings = settings
        self.namespace = settings.kube_namespace
        self.cluster = settings.kube_cluster
        self.metrics = metrics or Metrics()
        self.events = EventBus()
        self.repository = ModelRepository(settings.models_dir)
        self._configuration = configuration
        self._api: KubeApi | None = None
        self._tasks: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, dict[str, Any]] = {}
        self._clusters: dict[str, dict[str, Any]] = {}
        """The served InferenceCluster by name: at most one entry, none while it does not exist."""
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # lifecycle ---------------------------------------------------------------------------

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            raise ConflictError("the Kubernetes backend is not started")
        return self._api

    async def start(self) -> None:
        configuration = self._configuration or load_configuration()
        self._api = KubeApi(configuration, concurrency=4)
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        await self._refresh()
        tasks = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{TASK_PLURAL}"
        pods = f"/api/v1/namespaces/{self.namespace}/pods"
        clusters = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{CLUSTER_PLURAL}"
        for kind, path, query in (
            ("task", tasks, {}),
            ("pod", pods, {"labelSelector": f"{LABEL_CLUSTER}={self.cluster}"}),
            ("cluster", clusters, {"fieldSelector": f"metadata.name={self.cluster}"}),
        ):
            thread = threading.Thread(target=self._informer, args=(kind, path, query), name=f"watch-{kind}s")
            thread.daemon = True
            thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._api is not None:
            self._api.close()
            self._api = None

    async def _refresh(self) -> None:
        items = await self.api.list(GROUP, VERSION, TASK_PLURAL, self.namespace)
        self._tasks = {t["metadata"]["name"]: t for t in items if self._ours(t)}
        pods = await self.api.list("", "v1", "pods", self.namespace, label_selector=f"{LABEL_CLUSTER}={self.cluster}")
        self._pods = {p["metadata"]["name"]: p for p in pods}
        body = await self.api.get_cluster(self.namespace, self.cluster)
        self._clusters = {self.cluster: body} if body is not None else {}

    @property
    def _cluster_body(self) -> dict[str, Any] | None:
        return self._clusters.get(self.cluster)

    def _informer(self, kind: str, path: str, query: dict[str, str]) -> None:
        """List, then watch from the list's version; again after every timeout or error."""
        backoff = 0.5
        while not self._stop.is_set():
            api = self._api
            if api is None:
                return
            try:
                listing = api.request_sync("GET", path, query=query or None)
                self._dispatch(kind, "SYNC", {"items": listing.get("items") or []})
                version = (listing.get("metadata") or {}).get("resourceVersion")
                watch_query = {**query, **({"resourceVersion": version} if version else {})}
                for event in api.watch_sync(path, query=watch_query, timeout=_WATCH_SECONDS):
                    if self._stop.is_set():
                        return
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self._dispatch(kind, event["type"], event["object"])
                backoff = 0.5
            except Exception as exc:  # the informer outlives any network trouble
                if self._stop.is_set():
                    return
                log.debug("%s informer: %s; again in %.1fs", kind, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(10.0, backoff * 2)

    def _dispatch(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._apply, kind, event, obj)

    def _ours(self, task: dict[str, Any]) -> bool:
        return (task.get("spec") or {}).get("clusterRef") == self.cluster

    def _apply(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        if event == "SYNC":
            self._sync(kind, obj["items"])
        else:
            self._handler(kind)(event, obj)

    def _handler(self, kind: str) -> Any:
        return {"task": self._apply_task, "pod": self._apply_pod, "cluster": self._apply_cluster}[kind]

    def _cache(self, kind: str) -> dict[str, dict[str, Any]]:
        return {"task": self._tasks, "pod": self._pods, "cluster": self._clusters}[kind]

    def _sync(self, kind: str, items: list[dict[str, Any]]) -> None:
        """A fresh listing: what changed while no watch was open goes through the watch's path.

        So an object deleted or changed between two watches still reaches the
        cache, the metrics and the event stream.
        """
        cache = self._cache(kind)
        fresh = {i["metadata"]["name"]: i for i in items if kind != "task" or self._ours(i)}
        handler = self._handler(kind)
        for name in cache.keys() - fresh.keys():
            handler("DELETED", cache[name])
        for name, item in fresh.items():
            if _version(cache.get(name)) != _version(item):
                handler("MODIFIED", item)

    def _apply_pod(self, event: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if event == "DELETED":
            self._pods.pop(name, None)
        else:
            self._pods[name] = obj
        if self.events.subscribers:
            self.events.publish("worker.updated", self._worker_public(obj).model_dump(mode="json"))

    def _apply_cluster(self, event: str, obj: dict[str, Any]) -> None:
        """The served cluster's spec (workers' concurrency and backend) and whether it exists."""
        if obj["metadata"]["name"] != self.cluster:
            return
        before = (self._cluster_body or {}).get("spec")
        if event == "DELETED":
            self._clusters.pop(self.cluster, None)
            return
        self._clusters[self.cluster] = obj
        if self.events.subscribers and obj.get("spec") != before:
            for pod in self._pods.values():
                self.events.publish("worker.updated", self._worker_public(pod).model_dump(mode="json"))

    def _apply_task(self, event: str, obj: dict[str, Any]) -> None:
        if not self._ours(obj):
            return
        name = obj["metadata"]["name"]
        before = self._tasks.get(name)
        if event == "DELETED":
            self._tasks.pop(name, None)
            self._publish_task("task.deleted", obj)
            return
        self._tasks[name] = obj
        self._observe(before, obj)
        self._publish_task("task.created" if before is None else "task.updated", obj)

    def _publish_task(self, event_type: str, task: dict[str, Any]) -> None:
        if self.events.subscribers:
            public = self._task_public(task, with_result=False).model_dump(mode="json", exclude={"history"})
            self.events.publish(event_type, public)

    def _observe(self, before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        """Facade metrics, as the local backend counts them, from the changes the watch shows."""
        old = ((before or {}).get("status") or {}).get("phase")
        status = after.get("status") or {}
        new = status.get("phase")
        model = (after.get("spec") or {}).get("model", "")
        if new in {p.value for p in TERMINAL_PHASES} and old != new and before is not None:
            self.metrics.tasks_finished.labels(model, new).inc()
            latency = status.get("latency") or {}
            if new == Phase.SUCCEEDED.value and "runSeconds" in latency:
                self.metrics.compute_duration.labels(model).observe(latency["runSeconds"])
        if new == Phase.RUNNING.value and old != new:
            queued = (status.get("latency") or {}).get("queueSeconds")
            created = parse_time(after["metadata"].get("creationTimestamp"))
            started = parse_time(status.get("startTime"))
            if queued is None and created is not None and started is not None:
                queued = max(0.0, (started - created).total_seconds())
            if queued is not None:
                self.metrics.queue_duration.labels(model).observe(queued)

    # tasks -------------------------------------------------------------------------------

    async def _cluster(self) -> dict[str, Any]:
        """The served InferenceCluster, or :class:`ConflictError` (409) while it is missing.

        409 rather than 404: the request names no missing resource (the route
        and the model exist, the body is valid); it conflicts with the current
        state of the facade's cluster, and the same request succeeds once the
        InferenceCluster is (re)created. The informer's copy is trusted when it
        has one; when it has none, the API server is asked, so a cluster created
        a moment ago is found before its watch event arrives.
        """
        body = self._cluster_body or await self.api.get_cluster(self.namespace, self.cluster)
        where = f"InferenceCluster {self.cluster!r} in namespace {self.namespace!r}"
        if body is None:
            raise ConflictError(
                f"{where} does not exist (LEGACYGPU_KUBE_CLUSTER / LEGACYGPU_KUBE_NAMESPACE); "
                "create it before submitting tasks"
            )
        if body["metadata"].get("deletionTimestamp"):
            raise ConflictError(f"{where} is being deleted; tasks cannot be submitted to it")
        return body

    async def submit_task(self, request: TaskCreate) -> TaskPublic:
        if self.repository.names():  # a repository mounted here: refuse bad requests with a 4xx now
            validate_inputs(self.repository.get(request.model), request.inputs)
        await self._cluster()
        spec: dict[str, Any] = {
            "clusterRef": self.cluster,
            "model": request.model,
            "inputs": [t.model_dump(exclude_none=True) for t in request.inputs],
            "priority": request.priority,
            "timeoutSeconds": request.timeout_seconds or self.settings.default_timeout_seconds,
            "maxRetries": (
                request.max_retries if request.max_retries is not None else self.settings.default_max_retries
            ),
        }
        if request.parameters:
            spec["parameters"] = request.parameters
        needs: dict[str, Any] = {}
        if request.requirements.min_vram_mib:
            needs["minVramMiB"] = request.requirements.min_vram_mib
        if request.requirements.gpu_family:
            needs["gpuFamily"] = request.requirements.gpu_family
        if needs:
            spec["requirements"] = needs
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": TASK_KIND,
            "metadata": {
                "name": f"task-{uuid.uuid4().hex[:12]}",
                "labels": {"app.kubernetes.io/created-by": "legacygpu-api"},
            },
            "spec": spec,
        }
        size = len(json.dumps(body, separators=(",", ":")))
        if size > MAX_TASK_BYTES:
            raise PayloadTooLargeError(
                f"the inputs make an InferenceTask of {size} bytes, over the {MAX_TASK_BYTES} bytes "
                f"an object may take in the Kubernetes API; {_BY_REFERENCE}"
            )
        try:
            created = await self.api.create(GROUP, VERSION, TASK_PLURAL, self.namespace, body)
        except ApiError as exc:
            if exc.status == 422:
                raise ValidationError(str(exc)) from exc
            if exc.status == 413 or "request is too large" in str(exc):  # the API server's or etcd's own limit
                message = f"the API server refused the task as too large ({exc}); {_BY_REFERENCE}"
                raise PayloadTooLargeError(message) from exc
            raise
        self._tasks.setdefault(created["metadata"]["name"], created)
        self.metrics.tasks_submitted.labels(request.model).inc()
        return self._task_public(created)

    async def submit_tasks(self, requests: Sequence[TaskCreate]) -> list[TaskPublic]:
        """One InferenceTask per request, created in order (the Kubernetes API creates one object per call).

        Every input is checked against the repository (when one is mounted) before any task is created,
        so a bad one creates none; a create the API server refuses midway leaves the tasks before it
        created, and its error names the task (``tasks[i]``) and how many were created.
        """
        if self.repository.names():
            for i, request in enumerate(requests):
                try:
                    validate_inputs(self.repository.get(request.model), request.inputs)
                except ValidationError as exc:
                    raise type(exc)(f"tasks[{i}]: {exc}") from exc
        created: list[TaskPublic] = []
        for i, request in enumerate(requests):
            try:
                created.append(await self.submit_task(request))
            except (ValidationError, ConflictError) as exc:
                names = ", ".join(t.id for t in created) or "none"
                raise type(exc)(f"tasks[{i}]: {exc} (created before it: {names})") from exc
        return created

    async def _task(self, task_id: str) -> dict[str, Any]:
        try:
            body = await self.api.get_task(self.namespace, task_id)
        except ApiNotFoundError:
            raise NotFoundError(f"no task {task_id!r}") from None
        if not self._ours(body):
            raise NotFoundError(f"no task {task_id!r} in cluster {self.cluster!r}")
        return body

    async def get_task(self, task_id: str) -> TaskPublic:
        body = await self._task(task_id)
        result_ref = (body.get("status") or {}).get("resultRef")
        if result_ref and result_ref.startswith("configmap://"):
            name, _, key = result_ref[len("configmap://"):].partition("/")
            with contextlib.suppress(ApiError, ValueError):
                configmap = await self.api.get("", "v1", "configmaps", self.namespace, name)
                body = {**body, "status": {**body["status"], "result": json.loads(configmap["data"][key])}}
        return self._task_public(body)

    async def list_tasks(
        self,
        *,
        phases: Sequence[str] | None = None,
        worker_id: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[TaskPublic], int]:
        wanted = set(phases or ())
        rows = [
            t for t in self._tasks.values()
            if (not wanted or (t.get("status") or {}).get("phase", Phase.PENDING.value) in wanted)
            and (worker_id is None or ((t.get("status") or {}).get("workerRef") or {}).get("pod") == worker_id)
            and (model is None or (t.get("spec") or {}).get("model") == model)
        ]
        rows.sort(key=lambda t: (t["metadata"].get("creationTimestamp") or "", t["metadata"]["name"]), reverse=True)
        return [self._task_public(t, with_result=False) for t in rows[offset : offset + limit]], len(rows)

    async def cancel_task(self, task_id: str) -> TaskPublic:
        body = await self._task(task_id)
        phase = (body.get("status") or {}).get("phase") or Phase.PENDING.value
        if is_terminal(phase):
            raise ConflictError(f"task {task_id} is already {phase} and cannot be cancelled")
        await self.api.patch(GROUP, VERSION, TASK_PLURAL, self.namespace, task_id, {"spec": {"cancel": True}})
        deadline = time.monotonic() + 5.0  # the operator ends it; show that when it is quick
        while time.monotonic() < deadline:
            body = await self._task(task_id)
            if is_terminal((body.get("status") or {}).get("phase") or Phase.PENDING.value):
                break
            await asyncio.sleep(0.1)
        return self._task_public(body)

    @staticmethod
    def _task_public(task: dict[str, Any], *, with_result: bool = True) -> TaskPublic:
        return task_public(task_record(task), with_result=with_result)

    # workers -----------------------------------------------------------------------------

    def _worker_public(self, pod: dict[str, Any]) -> WorkerPublic:
        meta, status = pod["metadata"], pod.get("status") or {}
        annotations = meta.get("annotations") or {}
        try:
            stats = json.loads(annotations.get(ANNOTATION_WORKER_STATS) or "{}")
        except ValueError:
            stats = {}
        conditions = {c.get("type"): c for c in status.get("conditions") or ()}
        ready = (conditions.get("Ready") or {}).get("status") == "True"
        if meta.get("deletionTimestamp"):
            state = "stopped"
        elif status.get("phase") in ("Failed", "Succeeded"):
            state = "lost"
        elif annotations.get(ANNOTATION_DRAIN) == "true":
            state = "draining"
        elif ready:
            state = "active"
        else:
            state = "stopped"
        name = meta["name"]
        assigned = sum(
            1 for t in self._tasks.values()
            if (t.get("status") or {}).get("phase") in ASSIGNED_PHASES
            and ((t.get("status") or {}).get("workerRef") or {}).get("pod") == name
        )
        created = parse_time(meta.get("creationTimestamp")) or now_utc()
        seen = [parse_time(c.get("lastTransitionTime")) for c in conditions.values()]
        last = now_utc() if ready else max([t for t in seen if t is not None], default=created)
        spec = (self._cluster_body or {}).get("spec") or {}
        return WorkerPublic(
            id=name,
            name=name,
            host=(pod.get("spec") or {}).get("nodeName") or "",
            pid=0,
            state=state,
            device=DeviceInfoPublic(
                name=stats.get("device") or "unknown",
                type="gpu" if stats.get("gpuFamily") else "cpu",
                backend=stats.get("backend") or spec.get("backend", "auto"),
                vram_mib=int(stats.get("vramMiB") or 0),
                gpu_family=stats.get("gpuFamily"),
            ),
            concurrency=int(spec.get("tasksPerWorker", 2)),
            assigned=assigned,
            registered_at=created,
            last_heartbeat=last,
            tasks_succeeded=int(stats.get("completed") or 0),
            tasks_failed=int(stats.get("failed") or 0),
            stats=stats,
        )

    async def list_workers(self) -> list[WorkerPublic]:
        return [self._worker_public(p) for p in sorted(self._pods.values(), key=lambda p: p["metadata"]["name"])]

    async def serving_endpoints(self) -> list[ServingEndpoint]:
        """The Ready worker pods' Open Inference Protocol endpoints (from the pod cache; no API call)."""
        models = ((self._cluster_body or {}).get("spec") or {}).get("models") or []
        found = (pod_endpoint(p, models) for p in sorted(self._pods.values(), key=lambda p: p["metadata"]["name"]))
        return [e for e in found if e is not None]

    async def get_worker(self, worker_id: str) -> WorkerPublic:
        pod = self._pods.get(worker_id)
        if pod is None:
            raise NotFoundError(f"no worker {worker_id!r} in cluster {self.cluster!r}")
        return self._worker_public(pod)

    async def drain_worker(self, worker_id: str) -> WorkerPublic:
        await self.get_worker(worker_id)
        pod = await self.api.patch(
            "", "v1", "pods", self.namespace, worker_id, {"metadata": {"annotations": {ANNOTATION_DRAIN: "true"}}}
        )
        self._pods[worker_id] = pod
        return self._worker_public(pod)

    # models and summaries ----------------------------------------------------------------

    async def list_models(self) -> list[ModelPublic]:
        return [ModelPublic.from_card(card) for card in self.repository.list()]

    def snapshot(self) -> dict[str, Any]:
        phases = {p.value: 0 for p in Phase}
        for task in self._tasks.values():
            phase = (task.get("status") or {}).get("phase") or Phase.PENDING.value
            phases[phase] = phases.get(phase, 0) + 1
        workers = [self._worker_public(p).model_dump(mode="json") for p in self._pods.values()]
        by_state = {state: 0 for state in ("active", "draining", "stopped", "lost")}
        for worker in workers:
            by_state[worker["state"]] += 1
        return {"tasks_by_phase": phases, "workers_by_state": by_state, "workers": workers}

    async def summary(self) -> dict[str, Any]:
        snap = self.snapshot()
        now = now_utc()
        window = 60.0
        succeeded = [
            t["status"] for t in self._tasks.values()
            if (t.get("status") or {}).get("phase") == Phase.SUCCEEDED.value
            and (parse_time(t["status"].get("completionTime")) or now) >= now - datetime.timedelta(seconds=300)
        ]
        last_minute = [
            s for s in succeeded
            if (parse_time(s.get("completionTime")) or now) >= now - datetime.timedelta(seconds=window)
        ]
        timings = [s.get("latency") or {} for s in succeeded]
        latencies = [t["totalSeconds"] * 1000 for t in timings if "totalSeconds" in t]
        compute = [t["computeSeconds"] * 1000 for t in timings if "computeSeconds" in t]
        return {
            "backend": self.name,
            "cluster": {"namespace": self.namespace, "name": self.cluster},
            "tasks_by_phase": snap["tasks_by_phase"],
            "workers_by_state": snap["workers_by_state"],
            "queue_depth": snap["tasks_by_phase"].get(Phase.QUEUED.value, 0)
            + snap["tasks_by_phase"].get(Phase.PENDING.value, 0),
            "throughput_per_second": len(last_minute) / window,
            "latency_ms": {f"p{q}": percentile(latencies, q) for q in (50, 90, 99)},
            "compute_ms": {f"p{q}": percentile(compute, q) for q in (50, 90, 99)},
            "window_seconds": {"throughput": window, "latency": 300},
        }

    # worker-facing (local mode only) -----------------------------------------------------

    @staticmethod
    def _not_here() -> ConflictError:
        return ConflictError(
            "in Kubernetes mode workers are pods of the InferenceCluster and watch their InferenceTasks; "
            "they do not register with the facade"
        )

    async def register_worker(self, request: WorkerRegister) -> WorkerRegistered:
        raise self._not_here()

    async def heartbeat(self, worker_id: str, beat: Heartbeat) -> HeartbeatReply:
        raise self._not_here()

    async def complete_tasks(self, worker_id: str, completions: Sequence[TaskCompletion]) -> list[CompletionAnswer]:
        raise self._not_here()

    async def deregister_worker(self, worker_id: str) -> WorkerPublic:
        raise self._not_here()
