"""What a task needs next, decided from a snapshot (pure functions).

:func:`task_view` reduces an InferenceTask to what the operator indexes
(never its inputs, which may be megabytes). :func:`decide` is the
operator's whole per-task policy, in this order:

1. finished tasks are deleted once ``ttlSecondsAfterFinished`` has passed
   (the operator's ``--finished-task-ttl``, an hour by default, where unset);
2. ``spec.cancel`` ends any unfinished task ``Cancelled``;
3. ``timeoutSeconds`` after creation an unfinished task ends ``Failed`` /
   ``DeadlineExceeded``;
4. any unfinished task is failed ``ClusterNotFound`` if its cluster is
   unknown after a short grace from its creation; a ``Pending`` task is
   failed ``InvalidInput`` if its tensors do not add up, and queued otherwise;
5. a task whose worker pod is lost goes back to the queue. ``Scheduled`` on
   a draining or terminating (deleted) pod: at once, no attempt spent
   (``WorkerDrained``; that worker finishes the task it runs, but its report
   is refused, so that one task may run twice). On a failed, gone or unready
   pod (``WorkerLost``): a ``Running`` task, and the one ``Scheduled`` task
   the worker was running unclaimed (the head in its run order,
   :func:`scheduled_heads`; never a batch shard), spend an attempt and go
   back after a backoff, or end ``Failed`` once the retries are spent; its
   other ``Scheduled`` tasks go back at once, no attempt spent.

Queued tasks are then placed by :func:`plan_assignments`, highest
``priority`` first (ties: oldest first), with the cluster's shared
scheduling strategy. Every status written comes from the builders in
:mod:`legacygpu.core.kube.contract`, which check each move against the core
state machine.
"""

from __future__ import annotations

import datetime
import functools
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from legacygpu.core import lifecycle
from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.contract import (
    AttemptStatus,
    TaskStatus,
    WorkerRef,
    cancelled_status,
    deadline_time,
    expired_status,
    parse_time,
    queued_status,
    released_status,
    run_order,
    terminal_status,
    unassigned_status,
)
from legacygpu.core.scheduling import Requirements, Strategy, WorkerInfo
from legacygpu.core.tasks import ASSIGNED_PHASES, TERMINAL_PHASES, Phase, Reason, RetryPolicy
from legacygpu.core.tensors import Tensor, check_consistent
from legacygpu.operator.batchplan import BatchFacts, batch_facts
from legacygpu.operator.clusterstate import PodView

__all__ = [
    "Action", "TaskView", "decide", "ending", "plan_assignments", "scheduled_heads", "task_view", "validate_inputs",
]


@dataclass(frozen=True)
class TaskView:
    """The indexed facts about one task."""

    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""
    generation: int | None = None
    cluster: str = ""
    model: str = ""
    priority: int = 0
    created: str = ""
    timeout_seconds: int | None = None
    max_retries: int = 3
    ttl_seconds: int | None = None
    cancel: bool = False
    requirements: Requirements = field(default_factory=Requirements)
    phase: Phase = Phase.PENDING
    attempts: int = 0
    worker: str | None = None
    scheduled_time: str | None = None
    retry_after: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    history: tuple[AttemptStatus, ...] = ()
    problem: str | None = None
    """Why the inputs are invalid (checked only while Pending)."""
    batch: BatchFacts | None = None
    """A batch task's or a shard's facts (:mod:`legacygpu.operator.batchplan`); None for others."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    # Parsed once per version of a task (a view lives until the task changes): a reconcile pass
    # asks them of every task, and parsing them anew each time was most of a pass's cost.
    @functools.cached_property
    def deadline(self) -> datetime.datetime | None:
        """When the task expires unfinished (``timeoutSeconds`` after creation), or None."""
        return deadline_time(self.created, self.timeout_seconds)

    def ttl_wake(self, ttl_seconds: int | None) -> Action | None:
        """A finished task's wake-up when its TTL runs out (None: it is kept), kept with the view.

        The operator's TTL is the same on every pass, so this is worked out once per version of
        the task instead of on every pass for every finished task.
        """
        memo: tuple[int | None, Action | None] | None = self.__dict__.get("_ttl_wake")
        if memo is None or memo[0] != ttl_seconds:
            finished = parse_time(self.completion_time)
            wake = None
            if ttl_seconds is not None and finished is not None:
                wake = Action(wake_at=finished + datetime.timedelta(seconds=int(ttl_seconds)))
            memo = (ttl_seconds, wake)
            self.__dict__["_ttl_wake"] = memo  # a frozen view: its __dict__ still takes a memo
        return memo[1]

    @property
    def status(self) -> TaskStatus:
        """The status fields the builders read."""
        status = TaskStatus(phase=self.phase.value, attempts=self.attempts)
        if self.worker:  # a lost worker's Scheduled task counts as its attempt (contract.released_status)
            status["workerRef"] = WorkerRef(pod=self.worker)
        if self.scheduled_time:
            status["scheduledTime"] = self.scheduled_time
        if self.start_time:
            status["startTime"] = self.start_time
        if self.history:
            status["history"] = list(self.history)
        return status

    @property
    def age(self) -> tuple[str, str]:
        """Placement order among equal priorities: oldest first, then by name."""
        return (self.created, self.name)

    def ref(self) -> dict[str, Any]:
        """A minimal body for Kubernetes Events about this task."""
        from legacygpu.core.kube.contract import API_VERSION, TASK_KIND

        return {
            "apiVersion": API_VERSION,
            "kind": TASK_KIND,
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }


def validate_inputs(spec: Mapping[str, Any]) -> str | None:
    """What is wrong with the inline tensors, or None; the model's own needs are the worker's to check."""
    for index, raw in enumerate(spec.get("inputs") or ()):
        try:
            check_consistent(Tensor.model_validate(raw))
        except ValidationError as exc:
            return f"spec.inputs[{index}]: {exc}"
        except ValueError as exc:
            return f"spec.inputs[{index}]: malformed tensor: {exc}"
    return None


def task_view(body: Mapping[str, Any]) -> TaskView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    needs = spec.get("requirements") or {}
    phase = Phase(status.get("phase") or Phase.PENDING.value)
    return TaskView(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=str(meta.get("resourceVersion", "")),
        generation=meta.get("generation"),
        cluster=spec.get("clusterRef", ""),
        model=spec.get("model", ""),
        priority=int(spec.get("priority") or 0),
        created=meta.get("creationTimestamp") or "",
        timeout_seconds=spec.get("timeoutSeconds"),
        max_retries=int(spec.get("maxRetries", 3)),
        ttl_seconds=spec.get("ttlSecondsAfterFinished"),
        cancel=bool(spec.get("cancel")),
        requirements=Requirements(
            min_vram_mib=int(needs.get("minVramMiB") or 0),
            gpu_family=needs.get("gpuFamily"),
            model=spec.get("model"),
        ),
        phase=phase,
        attempts=int(status.get("attempts") or 0),
        worker=(status.get("workerRef") or {}).get("pod"),
        scheduled_time=status.get("scheduledTime"),
        retry_after=status.get("retryAfter"),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        history=tuple(status.get("history") or ()),
        problem=validate_inputs(spec) if phase == Phase.PENDING else None,
        batch=batch_facts(spec, status, meta.get("ownerReferences") or ()),
    )


@dataclass(frozen=True)
class Action:
    """One thing to do about a task: write a status, delete it, or look again later."""

    status: TaskStatus | None = None
    delete: bool = False
    wake_at: datetime.datetime | None = None
    event: tuple[str, str, str] | None = None
    """(type, reason, message) of the Kubernetes Event to post."""
    admit: bool = False
    """A valid ``Pending`` task to accept (``Queued``). Its status is in ``status`` unless
    :func:`decide` was asked to defer it: then the caller builds it (:func:`queued_status`) only
    for the tasks it writes."""
    charge: bool = False
    """``status`` takes the task back from its lost pod as a spent attempt (the caller writes these last)."""

    @property
    def phase(self) -> Phase | None:
        return Phase(self.status["phase"]) if self.status and "phase" in self.status else None


_ADMIT = Action(admit=True)
_DELETE = Action(delete=True)


def _later(*moments: datetime.datetime | None) -> datetime.datetime | None:
    present = [m for m in moments if m is not None]
    return min(present) if present else None


def _end(status: TaskStatus) -> Action:
    """Write a terminal status and post it as an Event (Normal for a cancel, Warning otherwise)."""
    kind = "Normal" if status["phase"] == Phase.CANCELLED else "Warning"
    return Action(status=status, event=(kind, status["reason"], status["message"]))


def _failed(task: TaskView, reason: Reason, message: str, now: datetime.datetime) -> Action:
    """End ``task`` Failed for a reason only the operator gives (its cluster, its inputs)."""
    return _end(terminal_status(task.status, created=task.created, phase=Phase.FAILED, reason=reason,
                                message=message, now=now))


def _orphaned(
    task: TaskView, now: datetime.datetime, grace_seconds: float, deadline: datetime.datetime | None
) -> Action:
    """An unfinished task whose cluster is unknown: ``ClusterNotFound`` once the grace is over.

    The grace (from the task's creation) is for a cluster applied in the same
    breath as its tasks; any phase may get here: a Pending task for a cluster
    that never existed, or a Queued or assigned one whose cluster vanished
    without its cleanup (e.g. its finalizer removed by hand).
    """
    created = parse_time(task.created) or now
    give_up = created + datetime.timedelta(seconds=grace_seconds)
    if now < give_up:
        return Action(wake_at=_later(give_up, deadline))
    if task.phase == Phase.PENDING:
        message = f"InferenceCluster {task.cluster!r} does not exist in namespace {task.namespace!r}"
    else:
        message = f"InferenceCluster {task.cluster!r} was deleted"
    return _failed(task, Reason.CLUSTER_NOT_FOUND, message, now)


def ending(task: TaskView, now: datetime.datetime) -> Action | None:
    """The end of an unfinished task that needs no worker: cancelled, or past its deadline; else None.

    :func:`decide` starts with it, and so does a batch task before its split
    (:mod:`legacygpu.operator.batch`), which is never placed on a worker.
    """
    if task.cancel:
        return _end(cancelled_status(task.status, created=task.created, now=now))
    deadline = task.deadline
    if deadline is not None and now >= deadline:
        return _end(expired_status(task.status, created=task.created, timeout_seconds=task.timeout_seconds, now=now))
    return None


def decide(
    task: TaskView,
    *,
    cluster_exists: bool,
    pods: Mapping[str, PodView],
    now: datetime.datetime,
    policy: RetryPolicy,
    grace_seconds: float = 5.0,
    default_ttl_seconds: int | None = None,
    rng: random.Random | None = None,
    defer_admission: bool = False,
    heads: Mapping[str, str] | None = None,
) -> Action | None:
    """The next step for ``task``, or None when only scheduling (or nothing) can move it.

    ``default_ttl_seconds`` applies to finished tasks whose spec sets no TTL (None keeps them).
    ``defer_admission``: a valid ``Pending`` task gets ``Action(admit=True)`` without its status
    (the reconciler writes a waiting task only once it places it; building the ``Queued`` status
    of every waiting task on every pass was a third of the operator's CPU with 1,000 waiting).
    ``heads``: pod → the ``Scheduled`` task its worker runs first (:func:`scheduled_heads` of the
    cluster's tasks); None treats every ``Scheduled`` task as its pod's head.
    """
    if task.terminal:
        wake = task.ttl_wake(task.ttl_seconds if task.ttl_seconds is not None else default_ttl_seconds)
        if wake is None or wake.wake_at is None:
            return None
        return _DELETE if now >= wake.wake_at else wake
    ended = ending(task, now)
    if ended is not None:
        return ended
    deadline = task.deadline
    if not cluster_exists:
        return _orphaned(task, now, grace_seconds, deadline)
    if task.phase == Phase.PENDING:
        if task.problem:
            return _failed(task, Reason.INVALID_INPUT, task.problem, now)
        return _ADMIT if defer_admission else Action(status=queued_status(task.status, now), admit=True)
    if task.phase in ASSIGNED_PHASES:
        pod = pods.get(task.worker or "")
        problem = None
        if pod is None:
            problem = f"worker pod {task.worker} is gone"
        elif pod.deleting:
            problem = f"worker pod {task.worker} is terminating"
        elif pod.failed:
            problem = f"worker pod {task.worker} ended in phase {pod.phase}"
        elif not pod.ready:
            problem = f"worker pod {task.worker} is not ready"
        if (
            task.phase == Phase.SCHEDULED and pod is not None and not pod.failed
            and (pod.deleting or (pod.draining and problem is None))
        ):
            # A draining or terminating worker finishes what it runs and starts nothing new: the
            # rest go back at once, no attempt spent (the worker's report of the task it was
            # running unclaimed is then refused; the task runs again elsewhere).
            state = "terminating" if pod.deleting else "draining"
            status = unassigned_status(
                task.status, reason=Reason.WORKER_DRAINED, message=f"worker pod {task.worker} is {state}"
            )
            return Action(status=status, event=("Normal", status["reason"], status["message"]))
        if problem and task.phase == Phase.SCHEDULED and not _charged(task, heads):
            status = unassigned_status(task.status, reason=Reason.WORKER_LOST, message=problem)
            return Action(status=status, event=("Warning", status["reason"], status["message"]))
        if problem:
            status = released_status(
                task.status, created=task.created, max_retries=task.max_retries,
                reason=Reason.WORKER_LOST, message=problem, now=now, policy=policy, rng=rng,
            )
            return Action(status=status, event=("Warning", status["reason"], status["message"]), charge=True)
    if task.phase == Phase.QUEUED:
        retry = parse_time(task.retry_after)
        if retry is not None and retry > now:
            return Action(wake_at=_later(retry, deadline))
    return Action(wake_at=deadline) if deadline is not None else None


def _claimed_first(task: TaskView) -> bool:
    """Batch shards and listings: their worker claims them before running (never run while Scheduled)."""
    return task.batch is not None and task.batch.is_shard


def _charged(task: TaskView, heads: Mapping[str, str] | None) -> bool:
    """Whether a lost pod's ``Scheduled`` task spends an attempt: only the one its worker was running."""
    if _claimed_first(task):
        return False
    return heads is None or heads.get(task.worker or "") == task.name


def scheduled_heads(tasks: Iterable[TaskView]) -> dict[str, str]:
    """Pod → the ``Scheduled`` task its worker would be running now (the first in :func:`run_order`).

    A worker runs its tasks one at a time in that order, and runs an unclaimed one while it is
    still ``Scheduled``; when its pod is lost, this one alone is charged an attempt. It is a
    best guess: it agrees with what the worker runs unless a better-ranked task was assigned to
    the pod after the worker started its run. Shards and listings are claimed before they run,
    so they are never a pod's head; cancelled tasks are skipped by the worker, so they are
    neither. A pod with a ``Running`` task is running that one (claimed), so it has no head.
    """
    tasks = list(tasks)
    busy = {t.worker for t in tasks if t.phase == Phase.RUNNING and t.worker}
    best: dict[str, tuple[int, str, str]] = {}  # pod -> the run_order key of its head (the name last)
    for task in tasks:
        if (
            task.phase != Phase.SCHEDULED or not task.worker or task.worker in busy
            or task.cancel or _claimed_first(task)
        ):
            continue
        key = run_order(task.priority, task.created, task.name)
        if task.worker not in best or key < best[task.worker]:
            best[task.worker] = key
    return {pod: key[2] for pod, key in best.items()}


def plan_assignments(
    queued: Sequence[TaskView],
    workers: Sequence[WorkerInfo],
    strategy: Strategy,
    now: datetime.datetime,
) -> list[tuple[TaskView, WorkerInfo]]:
    """The shared placement plan (:func:`legacygpu.core.lifecycle.plan_assignments`) over ready tasks."""
    ready = [
        t for t in queued
        if t.phase in (Phase.QUEUED, Phase.PENDING)
        and (parse_time(t.retry_after) is None or parse_time(t.retry_after) <= now)  # type: ignore[operator]
    ]
    return lifecycle.plan_assignments(ready, workers, strategy)
