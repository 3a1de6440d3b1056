"""The contract between the operator, the workers and the facade in Kubernetes.

Everything the three sides must agree on lives here, with no dependency on
kopf or the Kubernetes client: the API coordinates, the labels and
annotations, the shape of ``InferenceTask.status`` and the pure functions
that build status patches for each move of the shared state machine
(:mod:`legacygpu.core.tasks`). The operator writes ``Queued`` and
``Scheduled`` (and takes tasks back from lost workers); the worker writes
``Running`` (which counts an attempt, as in local mode) and the terminal
phases; both go through these builders so the
fields, the timestamps and the retry arithmetic are the same on both sides.

Assignment is one write: ``status.workerRef.pod``, which the task CRD
declares a selectable field, so a worker watches only its own tasks with the
field selector :func:`worker_field_selector` (no label mirrors it: a second
write that an operator killed between the two could leave undone). A
successful short task costs two writes besides its creation: the operator's
``Scheduled`` (admission and placement together: a valid task waits
``Pending`` until a slot frees) and the worker's report, which writes the
start of the attempt and its end together (:func:`report_status` with ``unclaimed``).
A task that runs longer than the worker's claim delay, and every batch
shard, is claimed ``Running`` first (:func:`running_status`), a third write.
Since a worker may run a ``Scheduled`` task without a trace, a ``Scheduled``
task taken back from a lost worker counts as a spent attempt
(:func:`released_status`): an input that kills its worker still uses up its
retries. Events are posted only for failures, retries and cancellations. Every write that moves a phase carries
``metadata.resourceVersion``, so the API server refuses it (409) when the
object changed in between: two writers never both win.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from legacygpu.core import lifecycle
from legacygpu.core.lifecycle import ACCEPTED_MESSAGE, Attempt, TaskRecord
from legacygpu.core.scheduling import Requirements
from legacygpu.core.tasks import Phase, Reason, RetryPolicy

__all__ = [
    "ANNOTATION_DRAIN",
    "ANNOTATION_WORKER_STATS",
    "API_VERSION",
    "CATEGORY",
    "CLUSTER_KIND",
    "CLUSTER_PLURAL",
    "DEFAULT_DEVICE_RESOURCE",
    "DEFAULT_RESULT_INLINE_BYTES",
    "EVENT_MESSAGE_LIMIT",
    "GPU_NODE_LABEL",
    "GROUP",
    "LABEL_CLUSTER",
    "LABEL_COMPONENT",
    "LABEL_MANAGED_BY",
    "LABEL_WORKER",
    "MANAGER",
    "PORT_GRPC",
    "PORT_HTTP",
    "SERVING_GRPC_PORT",
    "SERVING_HTTP_PORT",
    "TASK_KIND",
    "TASK_PLURAL",
    "VERSION",
    "WORKER_FIELD",
    "AttemptStatus",
    "ModelFetchStatus",
    "TaskStatus",
    "WorkerRef",
    "WorkerStats",
    "assigned_status",
    "cancelled_status",
    "deadline_time",
    "event_manifest",
    "expired_status",
    "format_time",
    "now_utc",
    "parse_time",
    "queued_status",
    "released_status",
    "report_status",
    "requeue_status",
    "running_status",
    "seconds_between",
    "status_record",
    "task_record",
    "terminal_status",
    "unassigned_status",
    "worker_field_selector",
]

GROUP = "legacygpu.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "InferenceCluster"
CLUSTER_PLURAL = "inferenceclusters"
TASK_KIND = "InferenceTask"
TASK_PLURAL = "inferencetasks"
CATEGORY = "legacygpu"
MANAGER = "legacygpu-operator"

LABEL_CLUSTER = f"{GROUP}/cluster"
"""On worker pods and the Service: the InferenceCluster they belong to."""
LABEL_WORKER = f"{GROUP}/worker"
"""On result ConfigMaps: the worker pod that wrote them."""
WORKER_FIELD = "status.workerRef.pod"
"""The task CRD's selectable field naming the worker pod of the current attempt."""
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_WORKER_STATS = f"{GROUP}/worker-stats"
"""On worker pods: JSON :class:`WorkerStats` the worker publishes about itself."""
ANNOTATION_DRAIN = f"{GROUP}/drain"
"""On worker pods: ``"true"`` asks the operator to stop placing tasks there and take back waiting ones."""
GPU_NODE_LABEL = f"{GROUP}/gpu.present"
"""Node label the node agent sets on nodes with a legacy GPU."""
DEFAULT_DEVICE_RESOURCE = f"{GROUP}/gpu"
DEFAULT_RESULT_INLINE_BYTES = 32 * 1024
"""Results up to this JSON size go inline into ``status.result``; larger ones into a ConfigMap."""
SERVING_HTTP_PORT = 8000
"""Worker pods: the Open Inference Protocol over REST (Triton's port); the facade forwards ``/v2`` here."""
SERVING_GRPC_PORT = 8001
"""Worker pods: the Open Inference Protocol over gRPC (Triton's port)."""
PORT_HTTP = "http-v2"
"""Name of the worker container's REST port (the facade finds the port number by this name)."""
PORT_GRPC = "grpc-v2"
"""Name of the worker container's gRPC port."""


def worker_field_selector(pod: str) -> str:
    """The ``fieldSelector`` of the tasks assigned to worker pod ``pod``."""
    return f"{WORKER_FIELD}={pod}"


class WorkerRef(TypedDict, total=False):
    pod: str
    node: str


class ModelFetchStatus(TypedDict, total=False):
    """How far a worker got fetching one model of ``spec.modelSources`` (in :class:`WorkerStats`)."""

    phase: str
    """``Fetching``, ``Fetched``, ``Cached`` (found in the cache by its sha256) or ``Failed``."""
    bytes: int
    totalBytes: int
    percent: float
    message: str


class WorkerStats(TypedDict, total=False):
    """What a worker says about itself (pod annotation :data:`ANNOTATION_WORKER_STATS`).

    The wire shape only: the counters and the latency average are
    :class:`legacygpu.core.scheduling.WorkerStats` (``to_annotation``), the
    rest are device facts.
    """

    backend: str
    device: str
    vramMiB: int
    gpuFamily: str
    recentLatencyMs: float
    completed: int
    failed: int
    models: list[str]
    modelErrors: dict[str, str]
    modelFetch: dict[str, ModelFetchStatus]
    inflightRequests: int
    """Real-time (/v2) requests the pod is serving or queueing (the autoscaler counts them)."""


class AttemptStatus(TypedDict, total=False):
    """One entry of ``InferenceTask.status.history`` (:class:`legacygpu.core.lifecycle.Attempt`)."""

    attempt: int
    worker: str
    startTime: str
    outcome: str
    completionTime: str
    reported: bool


class TaskStatus(TypedDict, total=False):
    """``InferenceTask.status``; every key is optional until the phase needs it."""

    phase: str
    reason: str
    message: str
    attempts: int
    workerRef: WorkerRef | None
    queuedTime: str
    scheduledTime: str | None
    startTime: str | None
    completionTime: str
    retryAfter: str | None
    latency: dict[str, float]
    history: list[AttemptStatus]
    result: dict[str, Any]
    resultRef: str
    observedGeneration: int


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with microseconds, as Kubernetes' MicroTime prints it."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    """The inverse of :func:`format_time`; also reads whole-second Kubernetes timestamps."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(datetime.UTC)


EVENT_MESSAGE_LIMIT = 1024
"""Longest Event message sent (the limit events.k8s.io sets on a note); a longer one is cut."""


def event_manifest(
    involved: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    *,
    component: str,
    instance: str | None = None,
    host: str | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (a body with ``apiVersion``, ``kind`` and ``metadata``).

    The operator and the workers both post Events through this. It writes the
    core/v1 form: ``firstTimestamp`` and ``lastTimestamp`` with ``count`` 1 and
    no ``eventTime`` (so no ``series`` and no ``action``). The API server then
    asks that the Event's namespace be the involved object's (both are taken
    from ``metadata.namespace``), and ``kubectl describe`` finds the Event by
    ``involvedObject``. ``component`` is the reporting component (and
    ``source.component``); ``instance`` (``reportingInstance``) and ``host``
    (``source.host``) are left out when not given.
    """
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace")
    stamp = format_time(now or now_utc())
    source = {"component": component} if host is None else {"component": component, "host": host}
    event: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"), "name": meta.get("name"),
            "namespace": namespace, "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:EVENT_MESSAGE_LIMIT],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": source,
        "reportingComponent": component,
    }
    if instance is not None:
        event["reportingInstance"] = instance
    return event


def seconds_between(start: str | None, end: str | None) -> float | None:
    begin, finish = parse_time(start), parse_time(end)
    if begin is None or finish is None:
        return None
    return round(max(0.0, (finish - begin).total_seconds()), 6)


def _epoch(value: str | datetime.datetime | None) -> float | None:
    moment = parse_time(value) if isinstance(value, str) or value is None else value
    return None if moment is None else moment.timestamp()


def _history(status: Mapping[str, Any]) -> tuple[Attempt, ...]:
    return tuple(
        Attempt(
            attempt=int(h.get("attempt") or 0),
            worker_id=str(h.get("worker") or ""),
            started_at=_epoch(h.get("startTime")) or 0.0,
            outcome=h.get("outcome"),
            finished_at=_epoch(h.get("completionTime")),
            reported=bool(h.get("reported", False)),
        )
        for h in status.get("history") or ()
    )


def _history_status(history: Sequence[Attempt]) -> list[AttemptStatus]:
    out: list[AttemptStatus] = []
    for attempt in history:
        entry = AttemptStatus(attempt=attempt.attempt, worker=attempt.worker_id,
                              startTime=format_time(_moment(attempt.started_at)))
        if attempt.outcome is not None:
            entry["outcome"] = attempt.outcome
            if attempt.finished_at is not None:
                entry["completionTime"] = format_time(_moment(attempt.finished_at))
        if attempt.reported:
            entry["reported"] = True
        out.append(entry)
    return out


def _moment(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)


def status_record(
    status: Mapping[str, Any],
    *,
    name: str = "",
    model: str = "",
    created: str | None = None,
    max_retries: int = 3,
    timeout_seconds: int | None = None,
) -> TaskRecord:
    """The lifecycle's view of an ``InferenceTask.status`` (plus the few spec facts the moves read)."""
    latency = status.get("latency") or {}
    compute = latency.get("computeSeconds")
    return TaskRecord(
        id=name,
        model=model,
        created_at=_epoch(created) or 0.0,
        phase=Phase(status.get("phase") or Phase.PENDING.value),
        reason=status.get("reason") or "",
        message=status.get("message") or "",
        attempts=int(status.get("attempts") or 0),
        max_retries=max_retries,
        timeout_seconds=timeout_seconds,
        worker_id=(status.get("workerRef") or {}).get("pod"),
        scheduled_at=_epoch(status.get("scheduledTime")),
        started_at=_epoch(status.get("startTime")),
        finished_at=_epoch(status.get("completionTime")),
        not_before=_epoch(status.get("retryAfter")),
        latency_ms=latency["totalSeconds"] * 1000 if "totalSeconds" in latency else None,
        compute_ms=compute * 1000 if compute is not None else None,
        result=status.get("result"),
        history=_history(status),
    )


def task_record(body: Mapping[str, Any]) -> TaskRecord:
    """The lifecycle's view of a whole ``InferenceTask`` (what the facade shows)."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    needs = spec.get("requirements") or {}
    record = status_record(
        body.get("status") or {}, name=meta.get("name", ""), model=spec.get("model", ""),
        created=meta.get("creationTimestamp"), max_retries=int(spec.get("maxRetries", 3)),
        timeout_seconds=spec.get("timeoutSeconds"),
    )
    return dataclasses.replace(
        record,
        priority=int(spec.get("priority") or 0),
        requirements=Requirements(
            min_vram_mib=int(needs.get("minVramMiB") or 0), gpu_family=needs.get("gpuFamily"), model=spec.get("model")
        ),
    )


def queued_status(
    status: TaskStatus | dict[str, Any], now: datetime.datetime, message: str = ACCEPTED_MESSAGE
) -> TaskStatus:
    """Pending → Queued: accepted for a cluster that exists (:func:`lifecycle.admit`)."""
    after = lifecycle.admit(status_record(status), now=now.timestamp(), message=message)
    return TaskStatus(
        phase=after.phase.value, reason=after.reason, message=after.message, attempts=after.attempts,
        queuedTime=format_time(now),
    )


def assigned_status(
    status: TaskStatus | dict[str, Any], *, pod: str, node: str | None, now: datetime.datetime
) -> TaskStatus:
    """Queued → Scheduled on ``pod`` (:func:`lifecycle.assign`); the attempt only counts once the worker starts it."""
    after = lifecycle.assign(status_record(status), worker_id=pod, now=now.timestamp())
    ref = WorkerRef(pod=pod)
    if node:
        ref["node"] = node
    return TaskStatus(
        phase=after.phase.value,
        reason=after.reason,
        message=after.message,
        attempts=after.attempts,
        workerRef=ref,
        scheduledTime=format_time(now),
        retryAfter=None,
    )


def running_status(status: TaskStatus | dict[str, Any], *, pod: str, now: datetime.datetime) -> TaskStatus:
    """Scheduled → Running (:func:`lifecycle.start`): the worker starts the attempt, which now counts."""
    after = lifecycle.start(status_record(status), worker_id=pod, now=now.timestamp())
    return TaskStatus(
        phase=after.phase.value,
        reason=after.reason,
        message=after.message,
        attempts=after.attempts,
        startTime=format_time(now),
        history=_history_status(after.history),
    )


def _ended(
    status: Mapping[str, Any], after: TaskRecord, *, created: str | None, now: datetime.datetime
) -> TaskStatus:
    """The status patch for a move into a terminal phase."""
    completed = format_time(now)
    latency: dict[str, float] = {}
    for key, start, end in (
        ("queueSeconds", created, status.get("startTime")),
        ("runSeconds", status.get("startTime"), completed),
        ("totalSeconds", created, completed),
    ):
        value = seconds_between(start, end)
        if value is not None:
            latency[key] = value
    if after.compute_ms is not None:
        latency["computeSeconds"] = round(after.compute_ms / 1000, 6)
    patch = TaskStatus(phase=after.phase.value, reason=after.reason, message=after.message, attempts=after.attempts,
                       completionTime=completed)
    if latency:
        patch["latency"] = latency
    if after.history:
        patch["history"] = _history_status(after.history)
    return patch


def terminal_status(
    status: TaskStatus | dict[str, Any],
    *,
    created: str | None,
    phase: Phase,
    reason: Reason,
    message: str,
    now: datetime.datetime,
    result: dict[str, Any] | None = None,
    result_ref: str | None = None,
    compute_ms: float | None = None,
    reported: bool = False,
) -> TaskStatus:
    """Any phase → Succeeded | Failed | Cancelled (:func:`lifecycle.finish`), with completion time and latency."""
    after = lifecycle.finish(
        status_record(status, created=created), phase=phase, reason=reason, message=message, now=now.timestamp(),
        compute_ms=compute_ms, reported=reported,
    )
    patch = _ended(status, after, created=created, now=now)
    if result is not None:
        patch["result"] = result
    if result_ref is not None:
        patch["resultRef"] = result_ref
    return patch


def cancelled_status(status: TaskStatus | dict[str, Any], *, created: str | None, now: datetime.datetime) -> TaskStatus:
    """Any unfinished phase → Cancelled (:func:`lifecycle.cancel`): the operator's answer to ``spec.cancel``."""
    after = lifecycle.cancel(status_record(status, created=created), now=now.timestamp())
    return _ended(status, after, created=created, now=now)


def deadline_time(created: str | None, timeout_seconds: int | None) -> datetime.datetime | None:
    """When an unfinished task expires (:func:`lifecycle.deadline`); None without a timeout or a creation time."""
    if parse_time(created) is None:
        return None
    at = lifecycle.deadline(status_record({}, created=created, timeout_seconds=timeout_seconds))
    return None if at is None else _moment(at)


def expired_status(
    status: TaskStatus | dict[str, Any], *, created: str | None, timeout_seconds: int | None, now: datetime.datetime
) -> TaskStatus:
    """Any unfinished phase → Failed / DeadlineExceeded (:func:`lifecycle.expire`)."""
    before = status_record(status, created=created, timeout_seconds=timeout_seconds)
    return _ended(status, lifecycle.expire(before, now=now.timestamp()), created=created, now=now)


def _requeued(
    status: Mapping[str, Any], after: TaskRecord, *, created: str | None, now: datetime.datetime | None
) -> TaskStatus:
    """The status patch for a move back to the queue, or into ``Failed`` once the retries are spent."""
    if after.terminal:  # only requeue_or_fail ends a task, at the time it is given
        if now is None:
            raise ValueError(f"{after.phase.value} task needs the time it ended (now)")
        return _ended(status, after, created=created, now=now)
    retry_after = None
    if after.not_before is not None and now is not None:
        retry_after = format_time(now + datetime.timedelta(seconds=after.not_before - now.timestamp()))
    patch = TaskStatus(
        phase=after.phase.value,
        reason=after.reason,
        message=after.message,
        attempts=after.attempts,
        workerRef=None,
        scheduledTime=None,
        startTime=None,
        retryAfter=retry_after,
    )
    if after.history:
        patch["history"] = _history_status(after.history)
    return patch


def unassigned_status(status: TaskStatus | dict[str, Any], *, reason: Reason, message: str) -> TaskStatus:
    """Scheduled → Queued at once (:func:`lifecycle.unassign`): the worker never started it, so none is spent."""
    return _requeued(status, lifecycle.unassign(status_record(status), reason=reason, why=message),
                     created=None, now=None)


def requeue_status(
    status: TaskStatus | dict[str, Any],
    *,
    created: str | None,
    max_retries: int,
    reason: Reason,
    message: str,
    now: datetime.datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    compute_ms: float | None = None,
    reported: bool = False,
) -> TaskStatus:
    """Running → Queued after a backoff, or Failed (same reason) once the retries are spent.

    :func:`lifecycle.requeue_or_fail` decides, exactly as for the local coordinator.
    """
    before = status_record(status, created=created, max_retries=max_retries)
    after = lifecycle.requeue_or_fail(
        before, reason=reason, why=message, now=now.timestamp(), policy=policy, rng=rng,
        compute_ms=compute_ms, reported=reported,
    )
    return _requeued(status, after, created=created, now=now)


def released_status(
    status: TaskStatus | dict[str, Any],
    *,
    created: str | None,
    max_retries: int,
    reason: Reason,
    message: str,
    now: datetime.datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> TaskStatus:
    """Take a task back from a lost worker pod as a spent attempt: Queued after a backoff, or Failed.

    A ``Running`` task is requeued (:func:`lifecycle.requeue_or_fail`). A ``Scheduled`` one is
    first started at its assignment (:func:`lifecycle.start`): the operator charges the task a
    failed, gone or unready pod may have been running unclaimed (:func:`report_status` with ``unclaimed``;
    the one first in :func:`run_order`), so an input that kills its worker ends ``Failed`` once
    its retries are spent. The pod's other ``Scheduled`` tasks go back with
    :func:`unassigned_status` (no attempt spent).
    """
    before = status_record(status, created=created, max_retries=max_retries)
    if before.phase == Phase.SCHEDULED:
        before = lifecycle.start(before, worker_id=before.worker_id or "", now=before.scheduled_at or now.timestamp())
    after = lifecycle.requeue_or_fail(before, reason=reason, why=message, now=now.timestamp(), policy=policy, rng=rng)
    return _requeued(status, after, created=created, now=now)


def run_order(priority: int, created: str | None, name: str) -> tuple[int, str, str]:
    """The order in which a worker runs the tasks assigned to it: highest priority, then oldest, then name.

    The worker picks by it, and the operator reads it to guess which ``Scheduled`` task a lost pod
    was running (:func:`released_status`): one function, so the two rank alike. The guess agrees
    with what the worker runs unless a better-ranked task was assigned to the pod during the run
    (the worker had already picked; the operator then charges the newcomer instead).
    """
    return (-int(priority or 0), created or "", name)


def report_status(
    status: TaskStatus | dict[str, Any],
    outcome: lifecycle.Outcome,
    *,
    created: str | None,
    max_retries: int,
    now: datetime.datetime,
    policy: RetryPolicy,
    result: dict[str, Any] | None = None,
    result_ref: str | None = None,
    compute_ms: float | None = None,
    rng: random.Random | None = None,
    unclaimed: tuple[str, datetime.datetime] | None = None,
) -> TaskStatus:
    """A worker's outcome for its attempt (:func:`lifecycle.report`), as a status patch.

    ``unclaimed``: the pod and the moment it started a ``Scheduled`` attempt it ran without a claim.
    The patch then carries the start too: the same moves as :func:`running_status` then the report, so
    the attempt count, ``startTime``, the history and the latencies are what a claim and a report would
    have written, the report's fields winning where both set one.
    """
    running = {} if unclaimed is None else running_status(status, pod=unclaimed[0], now=unclaimed[1])
    current = {**status, **running}
    if outcome.retryable:
        report = requeue_status(
            current, created=created, max_retries=max_retries, reason=Reason(outcome.reason), message=outcome.message,
            now=now, policy=policy, rng=rng, compute_ms=compute_ms, reported=True,
        )
    else:
        report = terminal_status(
            current, created=created, phase=outcome.phase, reason=Reason(outcome.reason), message=outcome.message,
            now=now, result=result, result_ref=result_ref, compute_ms=compute_ms, reported=True,
        )
    return TaskStatus(**{**running, **report})
