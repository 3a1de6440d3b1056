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

Assignment travels in two places: ``status.workerRef.pod`` is the truth, and
the label :data:`LABEL_WORKER` mirrors it so a worker can watch only its own
tasks with a label selector. Every write that moves a phase carries
``metadata.resourceVersion``, so the API server refuses it (409) when the
object changed in between: two writers never both win.
"""

from __future__ import annotations

import datetime
import random
from typing import Any, TypedDict

from legacygpu.core.tasks import Phase, Reason, RetryPolicy, attempts_left, check_transition

__all__ = [
    "ANNOTATION_DRAIN",
    "ANNOTATION_WORKER_STATS",
    "API_VERSION",
    "CATEGORY",
    "CLUSTER_KIND",
    "CLUSTER_PLURAL",
    "DEFAULT_DEVICE_RESOURCE",
    "DEFAULT_RESULT_INLINE_BYTES",
    "GPU_NODE_LABEL",
    "GROUP",
    "LABEL_CLUSTER",
    "LABEL_COMPONENT",
    "LABEL_MANAGED_BY",
    "LABEL_WORKER",
    "MANAGER",
    "TASK_KIND",
    "TASK_PLURAL",
    "VERSION",
    "TaskStatus",
    "WorkerRef",
    "WorkerStats",
    "assigned_status",
    "format_time",
    "now_utc",
    "parse_time",
    "queued_status",
    "requeue_status",
    "running_status",
    "seconds_between",
    "terminal_status",
    "unassigned_status",
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
"""On tasks: the worker pod assigned to run the current attempt."""
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


class WorkerRef(TypedDict, total=False):
    pod: str
    node: str


class WorkerStats(TypedDict, total=False):
    """What a worker says about itself (pod annotation :data:`ANNOTATION_WORKER_STATS`)."""

    backend: str
    device: str
    vramMiB: int
    gpuFamily: str
    recentLatencyMs: float
    completed: int
    failed: int
    models: list[str]


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


def seconds_between(start: str | None, end: str | None) -> float | None:
    begin, finish = parse_time(start), parse_time(end)
    if begin is None or finish is None:
        return None
    return round(max(0.0, (finish - begin).total_seconds()), 6)


def _phase(status: TaskStatus | dict[str, Any]) -> Phase:
    return Phase(status.get("phase") or Phase.PENDING.value)


def queued_status(status: TaskStatus | dict[str, Any], now: datetime.datetime, message: str) -> TaskStatus:
    """Pending → Queued: accepted for a cluster that exists."""
    check_transition(_phase(status), Phase.QUEUED)
    return TaskStatus(
        phase=Phase.QUEUED.value,
        reason=Reason.ACCEPTED.value,
        message=message,
        attempts=int(status.get("attempts") or 0),
        queuedTime=format_time(now),
    )


def assigned_status(
    status: TaskStatus | dict[str, Any], *, pod: str, node: str | None, now: datetime.datetime
) -> TaskStatus:
    """Queued → Scheduled on ``pod``; the attempt only counts once the worker starts it."""
    check_transition(_phase(status), Phase.SCHEDULED)
    ref = WorkerRef(pod=pod)
    if node:
        ref["node"] = node
    return TaskStatus(
        phase=Phase.SCHEDULED.value,
        reason=Reason.ASSIGNED.value,
        message=f"assigned to worker {pod}",
        attempts=int(status.get("attempts") or 0),
        workerRef=ref,
        scheduledTime=format_time(now),
        retryAfter=None,
    )


def running_status(status: TaskStatus | dict[str, Any], *, pod: str, now: datetime.datetime) -> TaskStatus:
    """Scheduled → Running: the worker starts the attempt, which now counts."""
    check_transition(_phase(status), Phase.RUNNING)
    attempt = int(status.get("attempts") or 0) + 1
    return TaskStatus(
        phase=Phase.RUNNING.value,
        reason=Reason.STARTED.value,
        message=f"attempt {attempt} running on worker {pod}",
        attempts=attempt,
        startTime=format_time(now),
    )


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
) -> TaskStatus:
    """Any phase → Succeeded | Failed | Cancelled, with completion time and latency."""
    check_transition(_phase(status), phase)
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
    patch = TaskStatus(phase=phase.value, reason=reason.value, message=message, completionTime=completed)
    if latency:
        patch["latency"] = latency
    if result is not None:
        patch["result"] = result
    if result_ref is not None:
        patch["resultRef"] = result_ref
    return patch


def unassigned_status(status: TaskStatus | dict[str, Any], *, reason: Reason, message: str) -> TaskStatus:
    """Scheduled → Queued at once: the worker never started the attempt, so none is spent."""
    check_transition(_phase(status), Phase.QUEUED)
    return TaskStatus(
        phase=Phase.QUEUED.value,
        reason=reason.value,
        message=f"{message}; back in the queue",
        workerRef=None,
        scheduledTime=None,
        retryAfter=None,
    )


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
) -> TaskStatus:
    """Running → Queued after a backoff, or Failed (same reason) once the retries are spent.

    The attempt that just ended counts; :func:`attempts_left` decides, and
    :class:`RetryPolicy` draws the delay, exactly as the local coordinator does.
    """
    attempts = int(status.get("attempts") or 0)
    if attempts_left(attempts, max_retries) <= 0:
        return terminal_status(
            status,
            created=created,
            phase=Phase.FAILED,
            reason=reason,
            message=f"{message}; no retries left after {attempts} attempt(s)",
            now=now,
        )
    check_transition(_phase(status), Phase.QUEUED)
    delay = policy.delay(attempts, rng)
    return TaskStatus(
        phase=Phase.QUEUED.value,
        reason=reason.value,
        message=f"{message}; attempt {attempts + 1} of {1 + max_retries} in {delay:.1f}s",
        workerRef=None,
        scheduledTime=None,
        startTime=None,
        retryAfter=format_time(now + datetime.timedelta(seconds=delay)),
    )
