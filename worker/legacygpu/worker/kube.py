"""The worker in Kubernetes: watch the tasks assigned to this pod, run, report.

``legacygpu worker start --kubernetes`` calls :func:`run_kube_worker` with
the pod's name and namespace (``POD_NAME``/``POD_NAMESPACE`` from the
downward API). Nothing connects to the worker: it watches the InferenceTasks
whose ``status.workerRef.pod`` is its pod (a field selector the CRD declares;
the operator assigns a task in that one status write), and for each
``Scheduled`` attempt, highest priority first:

1. **run** it with the lead's :class:`~legacygpu.worker.runner.TaskRunner`
   (inline inputs, or ``inputsUri``: a ConfigMap key or an http(s) URL; a
   batch task's shard runs each of its inputs, :mod:`legacygpu.worker.batch`);
2. **claim** it (:mod:`legacygpu.worker.claiming`) only when it runs longer than
   :data:`CLAIM_AFTER` seconds, or before running it when it is a batch shard (whose results are
   written as it goes) or was found ``Scheduled`` in the first list after this process started
   (a previous container of this pod may have been running it): write ``Running`` with the
   ``resourceVersion`` it read; the API server refuses the write (409) if the task moved on (the
   operator took it back, a user cancelled it), and the worker drops the attempt. A claim whose
   write fails otherwise is settled by reading the task again;
3. **report**: write the terminal phase, timings and result only if the
   attempt is still the current one, again guarded by the
   ``resourceVersion``: for a claimed attempt, still ``Running`` on this pod
   by the same assignment; for an unclaimed one, still ``Scheduled`` on
   this pod by the same assignment (uid, ``scheduledTime``, attempts), and
   the report then writes the attempt's start with its end
   (:func:`~legacygpu.core.kube.contract.report_status` with ``unclaimed``). A stale
   attempt's result is dropped, so a task never ends with two results. A
   success posts no Event (the status says it all), a failure posts a
   Warning.

A short task thus costs the API server one write from its worker, not two
(the claim was a quarter of the API server's CPU per task). What holds
instead of "no two workers run one attempt": a result is written once, by
the worker of the current assignment (a report whose write failed leaves
the assignment to run again); when a failed, gone or unready pod is taken
back, the task it was running counts as a spent attempt: its ``Running``
one, else the one ``Scheduled`` task it would be running (the first in
:func:`~legacygpu.core.kube.contract.run_order`, never a shard nor a
cancelled task; a guess, right unless a better-ranked task was assigned
to the pod during the run), so an input that kills its worker ends ``Failed`` once its
retries are spent, while its other ``Scheduled`` tasks, and those of a
draining or terminating pod, go back with no attempt spent. A short task
the operator takes back while this worker runs it unclaimed (draining,
terminating, or unready but alive) may therefore run a second time on
another worker; this worker's report of it is refused.

Bad input and unknown models end the task ``Failed`` for good; a model that
cannot load or run ends it ``Failed`` with the loader's message; anything
else (the API or the input URL unreachable) sends it back to the queue with
the shared retry policy. Results over the inline limit go to a ConfigMap
owned by the task. The pod publishes its device, backend, recent latency and
real-time requests in flight in an annotation the operator's strategies and
autoscaler read (at most every :data:`STATS_INTERVAL` seconds), and serves
``/healthz`` and ``/readyz`` for its probes.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.batch import claims_dir as claims_dir_default
from legacygpu.core.kube.client import MERGE_PATCH, json_lines, load_configuration, open_watch, request_json
from legacygpu.core.kube.contract import (
    ANNOTATION_WORKER_STATS,
    API_VERSION,
    DEFAULT_RESULT_INLINE_BYTES,
    GROUP,
    TASK_KIND,
    TASK_PLURAL,
    VERSION,
    ModelFetchStatus,
    TaskStatus,
    WorkerStats,
    event_manifest,
    now_utc,
    report_status,
    run_order,
    worker_field_selector,
)
from legacygpu.core.kube.errors import ApiError, ApiUnavailableError, from_api_exception
from legacygpu.core.lifecycle import Outcome, classify
from legacygpu.core.scheduling import WorkerStats as SharedWorkerStats
from legacygpu.core.tasks import Phase, Reason, RetryPolicy
from legacygpu.worker import claiming
from legacygpu.worker.batch import is_listing, is_shard, run_shard
from legacygpu.worker.claiming import Assignment
from legacygpu.worker.resultmaps import write_configmap

__all__ = ["KubeWorker", "run_kube_worker"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

WORKER_COMPONENT = "legacygpu-worker"
"""The reporting component of the Events a worker posts."""

CONFIGMAP_LIMIT = 900 * 1024
"""Largest result (JSON bytes) a worker stores in a ConfigMap (whose data may hold 1 MiB in all)."""


class _ResultTooLarge(Exception):
    """A result over what even a ConfigMap holds: the task fails ``ResultTooLarge``, never ``ModelError``."""
STATS_INTERVAL = 5.0
"""Least seconds between two patches of the pod's stats annotation.

Every patch is a pod write that the operator, the scheduler, the endpoints controllers and the
kubelet all receive; at one a second per worker it was a write for almost every task when tasks
were slow (982 pod patches for 1,000 tasks in the e2e benchmark). The strategies and the
autoscaler need a recent picture, not every task."""
CLAIM_AFTER = 1.0
"""Seconds a task runs before its worker claims it (writes ``Running``); a shorter one is reported at once.

Long enough that a short inference (milliseconds) needs no claim, short enough that a person or a
test watching a long one sees it ``Running`` within a second."""
_TASKS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{TASK_PLURAL}"


_RAN_KEPT = 1024
"""Assignments a worker remembers having run (far more than a watch could deliver again)."""


class _Health(http.server.ThreadingHTTPServer):
    daemon_threads = True
    worker: KubeWorker


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    server: _Health

    def do_GET(self) -> None:
        ok = {"/healthz": True, "/readyz": self.server.worker.ready.is_set()}.get(self.path.split("?")[0])
        self.send_response(404 if ok is None else 200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok\n" if ok else b"not ready\n")

    def log_message(self, format: str, *args: Any) -> None:
        return


class KubeWorker:
    """One worker pod's task loop (see the module docstring)."""

    def __init__(
        self,
        *,
        api_client: kubernetes.client.ApiClient,
        pod_name: str,
        namespace: str,
        runner: Any,
        inline_limit: int = DEFAULT_RESULT_INLINE_BYTES,
        configmap_limit: int = CONFIGMAP_LIMIT,
        policy: RetryPolicy | None = None,
        watch_timeout: float = 30.0,
        resync_seconds: float = 30.0,
        report_patience: float = 300.0,
        stats_interval: float = STATS_INTERVAL,
        load: Callable[[], int] | None = None,
        claims_dir: Path | None = None,
        claim_after: float = CLAIM_AFTER,
    ) -> None:
        self.api = api_client
        self.claim_after = claim_after
        """Seconds a task runs unclaimed (:data:`CLAIM_AFTER`); 0 claims every task before running it."""
        self.claims_dir = claims_dir or claims_dir_default()
        """Where the cluster's ``spec.batchClaims`` are mounted (batch tasks' ``pvc://`` folders)."""
        self.pod = pod_name
        self.namespace = namespace
        self.runner = runner
        self.inline_limit = inline_limit
        self.configmap_limit = configmap_limit
        self.policy = policy or RetryPolicy()
        self.watch_timeout = watch_timeout
        self.resync_seconds = resync_seconds
        self.report_patience = report_patience
        self.stats_interval = stats_interval
        self.load = load
        """The real-time (/v2) requests in flight on this pod, published for the autoscaler."""
        self.ready = threading.Event()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pending: dict[str, dict[str, Any]] = {}
        self.stats = WorkerStats(completed=0, failed=0)
        self._stats_sent = 0.0
        self._stats_dirty = False
        self._stream: Any = None
        self._ran: dict[Assignment, None] = {}
        """The assignments this worker ran, oldest first (the last :data:`_RAN_KEPT`): an unclaimed run
        leaves the task ``Scheduled`` until its report, so a watch that reconnects may deliver the same
        assignment again; this keeps it from running twice. Keyed on the assignment, not the
        resourceVersion, which any label or annotation written meanwhile changes."""
        self._listed = False
        """Whether the first list of this pod's tasks since the process started is done (no task runs before)."""
        self._claim_first: set[Assignment] = set()
        """The assignments found ``Scheduled`` in that first list: a previous container with this pod's
        name may have been running one unclaimed, so each is claimed before it runs."""
        self._timer = claiming.ClaimTimer(lambda body, now: self.claim(body, now=now), name=f"claim-{pod_name}")
        self.node = os.environ.get("NODE_NAME")

    # -- API access ------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
        content_type: str | None = None, timeout: Any = 30,
    ) -> Any:
        try:
            return request_json(
                self.api, method, path, body=body, query=query, content_type=content_type, timeout=timeout
            )
        except kubernetes.client.ApiException as exc:
            raise from_api_exception(exc, f"{method} {path}") from exc

    def get_task(self, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"{_TASKS.format(ns=self.namespace)}/{name}")  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, name: str, status: TaskStatus, resource_version: str) -> dict[str, Any]:
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status)}
        return self.request(  # type: ignore[no-any-return]
            "PATCH", f"{_TASKS.format(ns=self.namespace)}/{name}/status", body=body, content_type=MERGE_PATCH
        )

    # -- watching --------------------------------------------------------------------------------

    def _watch_once(self, stop: threading.Event) -> None:
        query = {"fieldSelector": worker_field_selector(self.pod)}
        path = _TASKS.format(ns=self.namespace)
        try:
            response = open_watch(self.api, path, query=query, timeout=self.watch_timeout, connect_timeout=5)
        except kubernetes.client.ApiException as exc:
            raise from_api_exception(exc, f"watch {path}") from exc
        self._stream = response
        try:
            self.ready.set()
            for event in json_lines(response, 4096):
                if stop.is_set():
                    return
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self.events.put(event)
        finally:
            self._stream = None
            response.release_conn()

    def _watch(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                self._watch_once(stop)
                backoff = 0.5
            except Exception as exc:  # the watch must survive anything the network does
                if stop.is_set():
                    return
                log.debug("task watch ended (%s); reconnecting in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(10.0, backoff * 2)

    def _resync(self) -> None:
        answer = self.request(
            "GET", _TASKS.format(ns=self.namespace), query={"fieldSelector": worker_field_selector(self.pod)}
        )
        items = answer.get("items") or ()
        if not self._listed:  # the first list since the process started
            self._claim_first = {Assignment.of(item) for item in items if self._mine(item)}
            self._listed = True
        for item in items:
            self.events.put({"type": "MODIFIED", "object": item})

    def _mine(self, body: dict[str, Any]) -> bool:
        """Whether ``body`` is a task waiting on this pod to run it (``Scheduled`` here, not cancelled)."""
        status = body.get("status") or {}
        return (
            status.get("phase") == Phase.SCHEDULED.value
            and (status.get("workerRef") or {}).get("pod") == self.pod
            and not (body.get("spec") or {}).get("cancel")
        )

    def _absorb(self, event: dict[str, Any]) -> None:
        body = event.get("object") or {}
        name = body.get("metadata", {}).get("name")
        if not name:
            return
        if event.get("type") != "DELETED" and self._mine(body) and Assignment.of(body) not in self._ran:
            self.pending[name] = body
        else:
            self.pending.pop(name, None)

    def _next(self) -> dict[str, Any] | None:
        if not self.pending:
            return None
        name = min(
            self.pending,
            key=lambda n: run_order(
                (self.pending[n].get("spec") or {}).get("priority") or 0,
                self.pending[n]["metadata"].get("creationTimestamp"), n,
            ),
        )
        return self.pending.pop(name)

    # -- one task --------------------------------------------------------------------------------

    def patiently(self, what: str, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)``, again and again while the API server is away (no answer, 429, 503, 504).

        A worker holding a claimed task or a finished result must not drop it because the API
        server restarts: the task would stay ``Running`` on a healthy pod that nobody takes it
        back from. It gives up (raises) after ``report_patience`` seconds.
        """
        deadline = time.monotonic() + self.report_patience
        backoff = 0.25
        while True:
            try:
                return call(*args)
            except ApiUnavailableError as exc:
                if time.monotonic() + backoff > deadline:
                    raise
                log.warning("%s: the API server is away (%s); trying again in %.1fs", what, exc, backoff)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)

    def claim(self, body: dict[str, Any], *, now: datetime.datetime | None = None) -> dict[str, Any] | None:
        """Scheduled → Running for this pod (:func:`legacygpu.worker.claiming.claim`)."""
        return claiming.claim(self, body, now=now)

    def finish(self, body: dict[str, Any], build: Any, *, claimed: bool = True) -> bool:
        """Write the attempt's report if it is still current (:func:`legacygpu.worker.claiming.finish`)."""
        return claiming.finish(self, body, build, claimed=claimed)

    def inputs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        spec = body.get("spec") or {}
        if spec.get("inputs"):
            return list(spec["inputs"])
        uri = spec.get("inputsUri") or ""
        try:
            if uri.startswith("configmap://"):
                name, _, key = uri[len("configmap://"):].partition("/")
                configmap = self.request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
                raw = (configmap.get("data") or {}).get(key)
                if raw is None:
                    raise ValidationError(f"spec.inputsUri: ConfigMap {name} has no key {key!r}")
                loaded = json.loads(raw)
            elif uri.startswith(("http://", "https://")):
                import httpx

                response = httpx.get(uri, timeout=30.0, follow_redirects=True)
                response.raise_for_status()
                loaded = response.json()
            else:
                raise ValidationError(f"spec.inputsUri: unsupported URI {uri!r}")
        except ApiError as exc:
            if exc.status == 404:
                raise ValidationError(f"spec.inputsUri: {exc}") from exc
            raise
        except ValueError as exc:
            raise ValidationError(f"spec.inputsUri: not JSON: {exc}") from exc
        tensors = loaded.get("inputs") if isinstance(loaded, dict) else loaded
        if not isinstance(tensors, list):
            raise ValidationError("spec.inputsUri: expected a JSON list of tensors or an object with 'inputs'")
        return tensors

    def _store_result(self, body: dict[str, Any], result: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        encoded = json.dumps(result, separators=(",", ":"))
        if len(encoded) <= self.inline_limit:
            return result, None
        if len(encoded) > self.configmap_limit:
            raise _ResultTooLarge(
                f"the model ran, but its result is {len(encoded)} bytes of JSON: over the {self.configmap_limit} "
                "bytes a result ConfigMap may hold (ask for less, e.g. a smaller top_k or batch)"
            )
        name = f"{body['metadata']['name']}-result"[:253]
        write_configmap(self, body, name, {"result.json": encoded})
        # Every field goes to the ConfigMap; the status keeps only a pointer-sized summary.
        summary = {"model": result.get("model"), "outputsOmitted": True, "fields": sorted(result)}
        return summary, f"configmap://{name}/result.json"

    def _remember(self, ran: Assignment) -> None:
        self._ran[ran] = None
        if len(self._ran) > _RAN_KEPT:
            del self._ran[next(iter(self._ran))]

    def execute(self, body: dict[str, Any]) -> None:
        """Run and report one task, claiming it first if it must be (a shard, found at start) or once it runs long."""
        assignment = Assignment.of(body)
        written = False
        try:
            written = self._execute(body, assignment)
        finally:
            if not written:  # still Scheduled here, a later delivery may run it (a stale one is not ours)
                self._ran.pop(assignment, None)

    def _execute(self, body: dict[str, Any], assignment: Assignment) -> bool:
        name = body["metadata"]["name"]
        started_at = now_utc()
        pending: claiming.PendingClaim | None = None
        claimed = body
        if self.claim_after <= 0 or is_shard(body.get("spec") or {}) or assignment in self._claim_first:
            answer = self.claim(body)  # if it raises, a later delivery is still claimed first
            self._claim_first.discard(assignment)
            if answer is None:
                return False
            claimed = answer
        else:
            pending = self._timer.start(body, started_at, self.claim_after)
        self._remember(assignment)
        try:
            ran = self._run_task(claimed)
        finally:
            if pending is not None:
                self._timer.settle(pending)
        was_claimed = pending is None
        if pending is not None and pending.attempted:
            fresh = pending.claimed
            standing = "running" if fresh is not None else None
            if pending.error is not None:  # the claim may or may not have been written: ask the task
                fresh = self.patiently(f"read {name}", self.get_task, name)
                standing = assignment.standing(fresh, self.pod)
            if fresh is None or standing not in ("running", "scheduled"):
                log.info("task %s was taken back while it ran; result dropped", name)
                return False
            was_claimed, claimed = standing == "running", fresh
        outcome, result, ref, compute_ms = ran
        spec = claimed.get("spec") or {}

        def build(status: dict[str, Any], created: str | None) -> TaskStatus:
            return report_status(
                status, outcome, created=created, max_retries=int(spec.get("maxRetries", 3)), now=now_utc(),
                policy=self.policy, result=result, result_ref=ref, compute_ms=compute_ms,
                unclaimed=None if was_claimed else (self.pod, started_at),
            )

        written = self.finish(claimed, build, claimed=was_claimed)
        if written and not outcome.retryable:
            self._record(outcome.succeeded, compute_ms)
        if written and not outcome.succeeded:
            self._event(claimed, outcome.phase, Reason(outcome.reason), outcome.message)
        return written

    def _run_task(self, body: dict[str, Any]) -> tuple[Outcome, dict[str, Any] | None, str | None, float | None]:
        """Run one task: (its outcome, the result, where a large result was stored, the compute time)."""
        name, spec = body["metadata"]["name"], body.get("spec") or {}
        started = time.perf_counter()
        result: dict[str, Any] | None = None
        ref: str | None = None
        error: Exception | None = None
        try:
            if is_shard(spec):  # a batch task's shard: its results go to its own ConfigMap or folder
                result = run_shard(self, body)
                if is_listing(spec):  # a folder's listing may be long: stored like any large result
                    result, ref = self._store_result(body, result)
            else:
                output = self.runner.run(spec.get("model", ""), self.inputs(body), spec.get("parameters"))
                result, ref = self._store_result(body, output)
        except Exception as exc:  # classified below: the model's and the input's faults end the task
            error = exc
        outcome = classify(error, worker=self.pod)
        if isinstance(error, _ResultTooLarge):  # the model ran: not ModelError, and no retry would help
            outcome = Outcome(Reason.RESULT_TOO_LARGE.value, str(error))
        if outcome.retryable:
            log.warning("task %s failed in a retryable way: %s", name, error)
        # A listing runs no model: the runner's figure is the previous task's, not this one's.
        compute_ms = getattr(self.runner, "last_compute_ms", None) if error is None and not is_listing(spec) else None
        log.info("task %s: %s (%s) in %.1f ms", name, outcome.phase.value, outcome.reason,
                 (time.perf_counter() - started) * 1000)
        return outcome, result, ref, compute_ms

    # -- reporting -------------------------------------------------------------------------------

    def _record(self, ok: bool, compute_ms: float | None) -> None:
        """Count a finished task in the published stats (:class:`legacygpu.core.scheduling.WorkerStats`)."""
        counted = SharedWorkerStats.from_annotation(self.stats).observe(ok=ok, latency_ms=compute_ms)
        self.stats.update(counted.to_annotation())  # type: ignore[typeddict-item]
        self._stats_dirty = True
        self.publish_stats()

    def publish_stats(self, *, force: bool = False) -> None:
        """Patch this pod's stats annotation (at most once per ``stats_interval`` unless forced; the loop retries)."""
        if not force and time.monotonic() - self._stats_sent < self.stats_interval:
            return
        self._stats_dirty = False
        if self.load is not None:
            with contextlib.suppress(Exception):
                self.stats["inflightRequests"] = int(self.load())
        with contextlib.suppress(Exception):
            info = self.runner.backend.info()
            self.stats["backend"], self.stats["device"] = info.backend, info.device
            self.stats["vramMiB"] = int(info.vram_mib)
            if info.gpu_family:
                self.stats["gpuFamily"] = info.gpu_family
        with contextlib.suppress(Exception):
            self.stats["models"] = list(self.runner.loaded_models())
        errors = getattr(self.runner, "model_errors", None)
        if errors:
            self.stats["modelErrors"] = dict(errors)
        try:
            self.request(
                "PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}",
                body={"metadata": {"annotations": {ANNOTATION_WORKER_STATS: json.dumps(self.stats)}}},
                content_type=MERGE_PATCH,
            )
            self._stats_sent = time.monotonic()
        except ApiError as exc:
            self._stats_dirty = True
            log.debug("could not publish worker stats: %s", exc)

    def _event(self, body: dict[str, Any], phase: Phase, reason: Reason, message: str) -> None:
        meta = body["metadata"]
        task = {"apiVersion": API_VERSION, "kind": TASK_KIND,
                "metadata": {"name": meta["name"], "namespace": self.namespace, "uid": meta.get("uid")}}
        event = event_manifest(
            task, "Normal" if phase == Phase.SUCCEEDED else "Warning", reason.value, message,
            component=WORKER_COMPONENT, instance=self.pod, host=self.node or self.pod,
        )
        with contextlib.suppress(ApiError):
            self.request("POST", f"/api/v1/namespaces/{self.namespace}/events", body=event)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set."""
        watcher = threading.Thread(target=self._watch, args=(stop,), name=f"watch-{self.pod}", daemon=True)
        watcher.start()
        self.publish_stats(force=True)
        last_resync = -float("inf")
        while not stop.is_set():
            try:
                self._absorb(self.events.get(timeout=0.2))
                while True:
                    self._absorb(self.events.get_nowait())
            except queue.Empty:
                pass
            if self.load is not None and not self._stats_dirty:
                with contextlib.suppress(Exception):
                    self._stats_dirty = int(self.load()) != self.stats.get("inflightRequests", 0)
            if self._stats_dirty:
                self.publish_stats()
            since = time.monotonic() - last_resync
            if since > self.resync_seconds or (not self._listed and since > 1.0):
                last_resync = time.monotonic()
                with contextlib.suppress(Exception):
                    self._resync()
            body = self._next() if self._listed else None  # nothing runs before the first list
            if body is None:
                continue
            try:
                self.execute(body)
            except Exception:
                log.exception("task %s could not be handled", body["metadata"].get("name"))
        self.ready.clear()
        self._timer.close()
        stream = self._stream
        if stream is not None:  # unblock the watcher's read at once
            with contextlib.suppress(Exception):
                stream.shutdown()
        watcher.join(timeout=2.0)


def run_kube_worker(
    *,
    pod_name: str,
    namespace: str,
    backend: str,
    model_dir: Path,
    api_client: kubernetes.client.ApiClient | None = None,
    stop_event: threading.Event | None = None,
    health_port: int | None = None,
    runner: Any = None,
    ready: threading.Event | None = None,
    model_fetch: dict[str, ModelFetchStatus] | None = None,
    load: Callable[[], int] | None = None,
) -> None:
    """Run this pod's worker loop until ``stop_event`` is set (forever when None).

    ``health_port`` (default: ``$LEGACYGPU_HEALTH_PORT``, none when unset)
    serves ``/healthz`` and ``/readyz``. ``runner`` replaces the TaskRunner
    built from ``model_dir`` and ``backend`` (tests). ``ready`` is set once
    the task watch is open (the pod's ``/v2/health/ready`` waits for it).
    ``model_fetch`` is what fetching ``spec.modelSources`` ended with
    (:func:`legacygpu.worker.podsources.fetch_pod_sources`), kept in the stats. ``load`` counts the
    pod's real-time requests in flight (published in its stats for the autoscaler).
    """
    if runner is None:
        from legacygpu.core.modelcards import ModelRepository
        from legacygpu.worker.backends import create_backend
        from legacygpu.worker.runner import TaskRunner, preload_from_env

        runner = TaskRunner(ModelRepository(Path(model_dir)), create_backend(backend))
        preload_from_env(runner)
    api_client = api_client or kubernetes.client.ApiClient(load_configuration())
    worker = KubeWorker(api_client=api_client, pod_name=pod_name, namespace=namespace, runner=runner, load=load)
    if ready is not None:
        worker.ready = ready
    if model_fetch:
        worker.stats["modelFetch"] = model_fetch
    stop = stop_event or threading.Event()
    if stop_event is None and threading.current_thread() is threading.main_thread():
        # The container's SIGTERM: finish the running task, then leave (the operator requeues the rest).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    if health_port is None and os.environ.get("LEGACYGPU_HEALTH_PORT"):
        health_port = int(os.environ["LEGACYGPU_HEALTH_PORT"])
    server: _Health | None = None
    if health_port is not None:
        # Bind the pod's own address when known (pods sharing a host, as in the e2e simulator).
        server = _Health((os.environ.get("POD_IP") or "0.0.0.0", health_port), _HealthHandler)
        server.worker = worker
        threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("worker %s/%s watching its tasks (backend %s)", namespace, pod_name, backend)
    try:
        worker.run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
