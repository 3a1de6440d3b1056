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
2. **claim** it, only when it runs longer than :data:`CLAIM_AFTER` seconds
   (and before anything else for a batch shard, whose results are written
   as it goes): write ``Running`` with the ``resourceVersion`` it read; the
   API server refuses the write (409) if the task moved on (the operator
   took it back, a user cancelled it), and the worker drops the attempt;
3. **report**: write the terminal phase, timings and result only if the
   attempt is still the current one, again guarded by the
   ``resourceVersion``: for a claimed attempt, still ``Running`` on this pod
   with the same ``attempts``; for an unclaimed one, still ``Scheduled`` on
   this pod by the same assignment (``scheduledTime``), and the report then
   writes the attempt's start with its end
   (:func:`~legacygpu.core.kube.contract.started_report_status`). A stale
   attempt's result is dropped, so a task never ends with two results. A
   success posts no Event (the status says it all), a failure posts a
   Warning.

A short task thus costs the API server one write from its worker, not two
(the claim was a quarter of the API server's CPU per task). What holds
instead of "no two workers run one attempt": a result is written once, by
the worker of the current assignment; a ``Scheduled`` task taken back from a
lost worker counts as a spent attempt (the worker may have been running it),
so an input that kills its worker ends ``Failed`` once its retries are spent;
and only when the operator gives back the tasks of a *draining* worker may
a short task that worker had already started run a second time on another
worker, whose report is then the only one kept.

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

import collections
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
    format_time,
    now_utc,
    report_status,
    running_status,
    started_report_status,
    worker_field_selector,
)
from legacygpu.core.kube.errors import ApiError, ApiUnavailableError, from_api_exception
from legacygpu.core.lifecycle import Outcome, classify
from legacygpu.core.scheduling import WorkerStats as SharedWorkerStats
from legacygpu.core.tasks import Phase, Reason, RetryPolicy
from legacygpu.worker.batch import is_listing, is_shard, run_shard
from legacygpu.worker.resultmaps import write_configmap

__all__ = ["KubeWorker", "run_kube_worker"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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


class _DeferredClaim:
    """The claim of a running task, written from a timer thread once it has run ``delay`` seconds.

    :meth:`settle` (after the run) cancels a claim not yet begun or waits for one under way; the
    lock keeps the claim and the report from ever being written at the same time.
    """

    def __init__(self, worker: KubeWorker, body: dict[str, Any], started: datetime.datetime, delay: float) -> None:
        self.worker, self.body, self.started = worker, body, started
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.settled = False
        self.attempted = False
        self.claimed: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self._run, args=(delay,), name=f"claim-{worker.pod}", daemon=True)
        self.thread.start()

    def _run(self, delay: float) -> None:
        if self.finished.wait(delay):
            return
        with self.lock:
            if self.settled:
                return
            self.attempted = True
            try:
                self.claimed = self.worker.claim(self.body, now=self.started)
            except Exception as exc:  # the run goes on; its report finds out whether the task is still ours
                log.warning("claim of task %s failed: %s", self.body["metadata"].get("name"), exc)

    def settle(self) -> tuple[bool, dict[str, Any] | None]:
        """(whether a claim was tried, the claimed task or None); no claim starts after this."""
        self.finished.set()
        with self.lock:
            self.settled = True
            return self.attempted, self.claimed


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
        self._ran: set[tuple[str, str | None]] = set()
        """(name, resourceVersion) of the assignments this worker ran: an unclaimed run leaves the task
        ``Scheduled`` until its report, so a watch that reconnects may deliver the same assignment
        again; this keeps it from running twice."""
        self._ran_order: collections.deque[tuple[str, str | None]] = collections.deque()
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
        for item in answer.get("items") or ():
            self.events.put({"type": "MODIFIED", "object": item})

    def _mine(self, body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        return (
            (status.get("workerRef") or {}).get("pod") == self.pod
            and status.get("phase") == Phase.SCHEDULED.value
            and not (body.get("spec") or {}).get("cancel")
        )

    def _absorb(self, event: dict[str, Any]) -> None:
        body = event.get("object") or {}
        name = body.get("metadata", {}).get("name")
        if not name:
            return
        version = body.get("metadata", {}).get("resourceVersion")
        if event.get("type") != "DELETED" and self._mine(body) and (name, version) not in self._ran:
            self.pending[name] = body
        else:
            self.pending.pop(name, None)

    def _next(self) -> dict[str, Any] | None:
        if not self.pending:
            return None
        name = min(
            self.pending,
            key=lambda n: (
                -int((self.pending[n].get("spec") or {}).get("priority") or 0),
                self.pending[n]["metadata"].get("creationTimestamp") or "",
                n,
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
        """Scheduled → Running for this pod (started at ``now``); None when the task is no longer ours to run.

        A claim whose answer was lost (the API server went away mid-request) may have been
        written: after such a try, the task read back ``Running`` on this pod with the attempt
        this claim counts is ours. (Without a lost answer it is not: another process with this
        pod's name, e.g. a restarted container, claimed it.)
        """
        name = body["metadata"]["name"]
        claiming = int((body.get("status") or {}).get("attempts") or 0) + 1
        uncertain = False
        for _ in range(5):
            if not self._mine(body):
                status = body.get("status") or {}
                written_by_us = (
                    uncertain
                    and status.get("phase") == Phase.RUNNING.value
                    and (status.get("workerRef") or {}).get("pod") == self.pod
                    and int(status.get("attempts") or 0) == claiming
                )
                return body if written_by_us else None
            running = running_status(body.get("status") or {}, pod=self.pod, now=now or now_utc())
            answer, maybe_written = self._claim_write(name, running, body["metadata"]["resourceVersion"])
            uncertain = uncertain or maybe_written
            if answer is not None:
                return answer
            fresh = self.patiently(f"read {name}", self.get_task, name)
            if fresh is None:
                return None
            body = fresh
        return None

    def _claim_write(self, name: str, running: TaskStatus, version: str) -> tuple[dict[str, Any] | None, bool]:
        """The claim's write: (the answer, or None on 409; whether a try without an answer was made)."""
        try:
            return self.patch_status(name, running, version), False
        except ApiUnavailableError:
            pass
        except ApiError as exc:
            if exc.status != 409:
                raise
            return None, False
        try:
            return self.patiently(f"claim {name}", self.patch_status, name, running, version), True
        except ApiError as exc:
            if exc.status != 409:
                raise
            return None, True

    def finish(self, body: dict[str, Any], build: Any, *, claimed: bool = True) -> bool:
        """Write ``build(status, created)`` if the attempt is still current.

        ``claimed``: ``body`` is the claim's answer (its attempts already count this attempt), and
        the attempt is current while the task is ``Running`` on this pod with that count; else
        ``body`` is the assignment the worker ran unclaimed, current while the task is still
        ``Scheduled`` on this pod by that assignment (same ``scheduledTime`` and attempts). The
        first try writes against ``body``'s resourceVersion (nothing else touches a running task
        in the common case); a 409 means something did, so the task is read again and the attempt
        checked before trying once more.
        """
        name, seen = body["metadata"]["name"], body.get("status") or {}
        attempt = int(seen.get("attempts") or 0) + (0 if claimed else 1)
        current: dict[str, Any] | None = body
        for _ in range(5):
            if current is None:
                log.info("task %s was deleted while it ran; result dropped", name)
                return False
            status = current.get("status") or {}
            if (
                status.get("phase") != (Phase.RUNNING if claimed else Phase.SCHEDULED).value
                or int(status.get("attempts") or 0) != (attempt if claimed else attempt - 1)
                or (status.get("workerRef") or {}).get("pod") != self.pod
                or (not claimed and status.get("scheduledTime") != seen.get("scheduledTime"))
            ):
                log.info(
                    "task %s attempt %d is stale (now %s, attempt %s); result dropped",
                    name, attempt, status.get("phase"), status.get("attempts"),
                )
                return False
            report = build(status, current["metadata"].get("creationTimestamp"))
            version = current["metadata"]["resourceVersion"]
            try:
                self.patiently(f"report {name}", self.patch_status, name, report, version)
                return True
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
            current = self.patiently(f"read {name}", self.get_task, name)
            if current is not None and self._reported(current, attempt):
                return True  # an earlier try was written, its answer lost with the API server
        return False

    def _reported(self, body: dict[str, Any], attempt: int) -> bool:
        """Whether ``body`` already carries this pod's report of ``attempt``."""
        status = body.get("status") or {}
        history = status.get("history") or []
        last = history[-1] if history else {}
        return (
            status.get("phase") != Phase.RUNNING.value
            and int(status.get("attempts") or 0) == attempt
            and last.get("attempt") == attempt
            and last.get("worker") == self.pod
            and bool(last.get("outcome"))
        )

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

    def _remember(self, ran: tuple[str, str | None]) -> None:
        self._ran.add(ran)
        self._ran_order.append(ran)
        while len(self._ran_order) > _RAN_KEPT:
            self._ran.discard(self._ran_order.popleft())

    def execute(self, body: dict[str, Any]) -> None:
        """Run and report one task, claiming it first if it is a batch shard or once it runs long."""
        name = body["metadata"]["name"]
        self._remember((name, body["metadata"].get("resourceVersion")))
        started_at = now_utc()
        deferred: _DeferredClaim | None = None
        claimed: dict[str, Any] | None = body
        if self.claim_after <= 0 or is_shard(body.get("spec") or {}):
            claimed = self.claim(body)
            if claimed is None:
                return
        else:
            deferred = _DeferredClaim(self, body, started_at, self.claim_after)
        assert claimed is not None
        spec = claimed.get("spec") or {}
        started = time.perf_counter()
        result: dict[str, Any] | None = None
        ref: str | None = None
        error: Exception | None = None
        try:
            if is_shard(spec):  # a batch task's shard: its results go to its own ConfigMap or folder
                result = run_shard(self, claimed)
                if is_listing(spec):  # a folder's listing may be long: stored like any large result
                    result, ref = self._store_result(claimed, result)
            else:
                output = self.runner.run(spec.get("model", ""), self.inputs(claimed), spec.get("parameters"))
                result, ref = self._store_result(claimed, output)
        except Exception as exc:  # classified below: the model's and the input's faults end the task
            error = exc
        outcome = classify(error, worker=self.pod)
        if isinstance(error, _ResultTooLarge):  # the model ran: not ModelError, and no retry would help
            outcome = Outcome(Reason.RESULT_TOO_LARGE.value, str(error))
        if outcome.retryable:
            log.warning("task %s failed in a retryable way: %s", name, error)
        # A listing runs no model: the runner's figure is the previous task's, not this one's.
        compute_ms = getattr(self.runner, "last_compute_ms", None) if error is None and not is_listing(spec) else None
        elapsed_ms = (time.perf_counter() - started) * 1000

        was_claimed = deferred is None
        if deferred is not None:
            was_claimed, claim_answer = deferred.settle()
            if was_claimed:
                if claim_answer is None:
                    log.info("task %s was taken back while it ran; result dropped", name)
                    return
                claimed = claim_answer

        def build(status: dict[str, Any], created: str | None) -> TaskStatus:
            if was_claimed:
                return report_status(
                    status, outcome, created=created, max_retries=int(spec.get("maxRetries", 3)), now=now_utc(),
                    policy=self.policy, result=result, result_ref=ref, compute_ms=compute_ms,
                )
            return started_report_status(
                status, outcome, pod=self.pod, started=started_at, created=created,
                max_retries=int(spec.get("maxRetries", 3)), now=now_utc(), policy=self.policy, result=result,
                result_ref=ref, compute_ms=compute_ms,
            )

        written = self.finish(claimed, build, claimed=was_claimed)
        if written and not outcome.retryable:
            self._record(outcome.succeeded, compute_ms)
        if written and not outcome.succeeded:
            self._event(claimed, outcome.phase, Reason(outcome.reason), outcome.message)
        log.info("task %s: %s (%s) in %.1f ms", name, outcome.phase.value, outcome.reason, elapsed_ms)

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
        now = format_time(now_utc())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": TASK_KIND, "name": meta["name"],
                "namespace": self.namespace, "uid": meta.get("uid"),
            },
            "type": "Normal" if phase == Phase.SUCCEEDED else "Warning",
            "reason": reason.value,
            "message": message[:1024],
            "source": {"component": "legacygpu-worker", "host": self.node or self.pod},
            "reportingComponent": "legacygpu-worker",
            "reportingInstance": self.pod,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(ApiError):
            self.request("POST", f"/api/v1/namespaces/{self.namespace}/events", body=event)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set."""
        watcher = threading.Thread(target=self._watch, args=(stop,), name=f"watch-{self.pod}", daemon=True)
        watcher.start()
        self.publish_stats(force=True)
        last_resync = time.monotonic()
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
            if time.monotonic() - last_resync > self.resync_seconds:
                last_resync = time.monotonic()
                with contextlib.suppress(Exception):
                    self._resync()
            body = self._next()
            if body is None:
                continue
            try:
                self.execute(body)
            except Exception:
                log.exception("task %s could not be handled", body["metadata"].get("name"))
        self.ready.clear()
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
