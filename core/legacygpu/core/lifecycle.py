"""The task lifecycle, written once: a frozen task record and the pure moves on it.

:mod:`legacygpu.core.tasks` says which phase may follow which; this module
says what each move *does* to a task: which fields change, which message is
recorded, how an attempt is counted and closed, when a retry is due. Both
backends are translations around it:

* the local coordinator reads a SQLite row into a :class:`TaskRecord`, calls
  a move, and writes the changed fields back compare-and-set;
* in Kubernetes the status builders of :mod:`legacygpu.core.kube.contract`
  read ``InferenceTask.status`` into a record, call the same move and turn
  the result into a status patch (the operator and the workers write those).

The moves, and who makes them (``docs/architecture.md`` has the table)::

    admit            Pending   → Queued        facade (local) / operator
    assign           Queued    → Scheduled     coordinator / operator
    start            Scheduled → Running       worker claim (counts an attempt; in Kubernetes a short
                                               task's start is written with its report)
    finish           any       → terminal      worker report, cancel, deadline
    requeue_or_fail  Running   → Queued|Failed lost worker, retryable error
    release          unassign or requeue_or_fail, whichever fits: a worker is gone (the Kubernetes
                     operator instead charges the one Scheduled task a lost pod may have been running
                     unclaimed: start, then requeue_or_fail; kube.contract.released_status)
    unassign         Scheduled → Queued        lost or draining worker (no attempt spent)
    undeliver        Running   → Queued        a start the worker never received (the attempt undone)
    cancel, expire   any       → Cancelled / Failed(DeadlineExceeded)

Also here because both sides need exactly one copy: the placement plan
(:func:`plan_assignments`: priority, then age), the worker's outcome
classifier (:func:`classify`) and the deadline rule (:func:`deadline`).
Times are seconds since the epoch; nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, TypeVar

from legacygpu.core.errors import ConflictError, ModelError, UnknownModelError, ValidationError
from legacygpu.core.scheduling import Requirements, Strategy, WorkerInfo
from legacygpu.core.tasks import Phase, Reason, RetryPolicy, attempts_left, check_transition, is_terminal

__all__ = [
    "ACCEPTED_MESSAGE",
    "CANCELLED_MESSAGE",
    "Attempt",
    "AttemptDict",
    "Outcome",
    "Placeable",
    "TaskRecord",
    "admit",
    "assign",
    "cancel",
    "check_report",
    "classify",
    "deadline",
    "deadline_message",
    "expire",
    "finish",
    "plan_assignments",
    "release",
    "report",
    "requeue_or_fail",
    "start",
    "unassign",
    "undeliver",
]

ACCEPTED_MESSAGE = "validated and waiting for a worker"
CANCELLED_MESSAGE = "cancelled on request"


class AttemptDict(TypedDict, total=False):
    """One attempt as stored (SQLite ``history`` column, ``InferenceTask.status.history``)."""

    attempt: int
    worker_id: str
    started_at: float
    outcome: str | None
    finished_at: float | None
    reported: bool


@dataclass(frozen=True)
class Attempt:
    """One run of a task on one worker; ``outcome`` stays None while it runs."""

    attempt: int
    worker_id: str
    started_at: float
    outcome: str | None = None
    finished_at: float | None = None
    reported: bool = False
    """True when the worker itself sent the outcome (a repeat of that report is then harmless)."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Attempt:
        return cls(
            attempt=int(raw["attempt"]),
            worker_id=str(raw.get("worker_id") or ""),
            started_at=float(raw.get("started_at") or 0.0),
            outcome=raw.get("outcome"),
            finished_at=raw.get("finished_at"),
            reported=bool(raw.get("reported", False)),
        )

    def to_dict(self) -> AttemptDict:
        out = AttemptDict(attempt=self.attempt, worker_id=self.worker_id, started_at=self.started_at)
        if self.outcome is not None:
            out["outcome"] = self.outcome
            out["finished_at"] = self.finished_at
        if self.reported:
            out["reported"] = True
        return out


@dataclass(frozen=True)
class TaskRecord:
    """Everything the lifecycle reads or writes about one task (never its inputs)."""

    id: str
    model: str
    created_at: float
    phase: Phase = Phase.PENDING
    reason: str = ""
    message: str = ""
    priority: int = 0
    attempts: int = 0
    """Attempts started so far (the one running included)."""
    max_retries: int = 3
    timeout_seconds: int | None = None
    requirements: Requirements = field(default_factory=Requirements)
    worker_id: str | None = None
    scheduled_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float | None = None
    """Earliest moment a retry may be placed (None: at once)."""
    latency_ms: float | None = None
    """Creation to finish."""
    compute_ms: float | None = None
    """The model's own time in the last attempt, as the worker measured it."""
    result: dict[str, Any] | None = None
    history: tuple[Attempt, ...] = ()

    @property
    def terminal(self) -> bool:
        return is_terminal(self.phase)

    @property
    def age(self) -> tuple[Any, ...]:
        return (self.created_at,)

    def history_dicts(self) -> list[AttemptDict]:
        return [a.to_dict() for a in self.history]


def _move(task: TaskRecord, phase: Phase, reason: str, message: str, **changes: Any) -> TaskRecord:
    check_transition(task.phase, phase)
    return dataclasses.replace(task, phase=phase, reason=str(reason), message=message, **changes)


def _closed(task: TaskRecord, outcome: str, now: float, *, reported: bool = False) -> tuple[Attempt, ...]:
    """The history with the running attempt closed (unchanged unless a run is open)."""
    history = task.history
    if task.phase == Phase.RUNNING and history and history[-1].outcome is None:
        last = dataclasses.replace(history[-1], outcome=str(outcome), finished_at=now, reported=reported)
        history = (*history[:-1], last)
    return history


def admit(task: TaskRecord, *, now: float, message: str = ACCEPTED_MESSAGE) -> TaskRecord:
    """Pending → Queued: the task is valid and its cluster exists."""
    return _move(task, Phase.QUEUED, Reason.ACCEPTED, message, not_before=None)


def assign(task: TaskRecord, *, worker_id: str, now: float, worker_name: str | None = None) -> TaskRecord:
    """Queued → Scheduled on a worker; no attempt is counted until the worker starts it."""
    message = f"assigned to worker {worker_name or worker_id}"
    return _move(task, Phase.SCHEDULED, Reason.ASSIGNED, message, worker_id=worker_id, scheduled_at=now,
                 not_before=None)


def start(task: TaskRecord, *, worker_id: str, now: float, worker_name: str | None = None) -> TaskRecord:
    """Scheduled → Running: the worker has it, and the attempt counts from here."""
    attempt = task.attempts + 1
    message = f"attempt {attempt} running on worker {worker_name or worker_id}"
    history = (*task.history, Attempt(attempt=attempt, worker_id=worker_id, started_at=now))
    return _move(task, Phase.RUNNING, Reason.STARTED, message, attempts=attempt, started_at=now, history=history)


def finish(
    task: TaskRecord,
    *,
    phase: Phase,
    reason: str,
    message: str,
    now: float,
    result: dict[str, Any] | None = None,
    compute_ms: float | None = None,
    reported: bool = False,
) -> TaskRecord:
    """Any live phase → Succeeded | Failed | Cancelled; closes the running attempt."""
    changes: dict[str, Any] = {
        "finished_at": now,
        "latency_ms": (now - task.created_at) * 1000,
        "history": _closed(task, reason, now, reported=reported),
    }
    if result is not None:
        changes["result"] = result
    if compute_ms is not None:
        changes["compute_ms"] = compute_ms
    return _move(task, phase, reason, message, **changes)


def unassign(task: TaskRecord, *, reason: str, why: str) -> TaskRecord:
    """Scheduled → Queued at once: the worker never started it, so no attempt is spent."""
    return _move(task, Phase.QUEUED, reason, f"{why}; back in the queue", worker_id=None, scheduled_at=None,
                 not_before=None)


def undeliver(task: TaskRecord, *, reason: str, why: str) -> TaskRecord:
    """Running → Queued at once: the worker never received the start, so the attempt it counted is undone.

    The open attempt leaves the history and the attempt count, as if the
    task had never been started; :class:`ConflictError` when the last
    attempt has an outcome already (it ran: that is a report, not this).
    """
    if task.phase != Phase.RUNNING or not task.history or task.history[-1].outcome is not None:
        raise ConflictError(f"task {task.id} is {task.phase.value} with no undelivered attempt to undo")
    earlier = task.history[:-1]
    return _move(task, Phase.QUEUED, reason, f"{why}; back in the queue", worker_id=None, scheduled_at=None,
                 not_before=None, attempts=task.attempts - 1, history=earlier,
                 started_at=earlier[-1].started_at if earlier else None)


def requeue_or_fail(
    task: TaskRecord,
    *,
    reason: str,
    why: str,
    now: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    compute_ms: float | None = None,
    reported: bool = False,
) -> TaskRecord:
    """Running → Queued after a backoff, or Failed (same reason) once the retries are spent.

    The attempt that just ended counts: :func:`attempts_left` decides and
    :class:`RetryPolicy` draws the delay.
    """
    if attempts_left(task.attempts, task.max_retries) <= 0:
        message = f"{why}; no retries left after {task.attempts} attempt(s)"
        return finish(task, phase=Phase.FAILED, reason=reason, message=message, now=now, compute_ms=compute_ms,
                      reported=reported)
    delay = policy.delay(task.attempts, rng)
    message = f"{why}; attempt {task.attempts + 1} of {task.max_retries + 1} in {delay:.1f}s"
    changes: dict[str, Any] = {"worker_id": None, "scheduled_at": None, "started_at": None}
    if compute_ms is not None:
        changes["compute_ms"] = compute_ms
    history = _closed(task, reason, now, reported=reported)
    return _move(task, Phase.QUEUED, reason, message, not_before=now + delay, history=history, **changes)


def release(
    task: TaskRecord, *, reason: str, why: str, now: float, policy: RetryPolicy, rng: random.Random | None = None
) -> TaskRecord:
    """Take a task back from a worker that is gone: at once if it never started, else as a spent attempt."""
    if task.phase == Phase.SCHEDULED:
        return unassign(task, reason=reason, why=why)
    return requeue_or_fail(task, reason=reason, why=why, now=now, policy=policy, rng=rng)


def cancel(task: TaskRecord, *, now: float, message: str = CANCELLED_MESSAGE) -> TaskRecord:
    """Any live phase → Cancelled."""
    if task.terminal:
        raise ConflictError(f"task {task.id} is already {task.phase.value} and cannot be cancelled")
    return finish(task, phase=Phase.CANCELLED, reason=Reason.CANCELLED, message=message, now=now)


def deadline(task: TaskRecord) -> float | None:
    """When an unfinished task fails ``DeadlineExceeded``: ``timeoutSeconds`` after its creation."""
    if not task.timeout_seconds:
        return None
    return task.created_at + task.timeout_seconds


def deadline_message(timeout_seconds: int | None) -> str:
    """What a user reads when a task ran out of time: in their terms (the submit option), not the API field's."""
    return (f"did not finish within its timeout of {timeout_seconds} s from submission; "
            "submit again with a longer --timeout (timeout_seconds) to give it more time")


def expire(task: TaskRecord, *, now: float) -> TaskRecord:
    """Any live phase → Failed / DeadlineExceeded."""
    message = deadline_message(task.timeout_seconds)
    return finish(task, phase=Phase.FAILED, reason=Reason.DEADLINE_EXCEEDED, message=message, now=now)


# Worker outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the worker that ran it reports it."""

    reason: str
    """A :class:`Reason` value (a worker may report its own, e.g. a newer one)."""
    message: str
    retryable: bool = False

    @property
    def succeeded(self) -> bool:
        return self.reason == Reason.COMPLETED

    @property
    def phase(self) -> Phase:
        """The phase this outcome asks for (``Queued`` for a retryable one, if retries are left)."""
        if self.succeeded:
            return Phase.SUCCEEDED
        return Phase.QUEUED if self.retryable else Phase.FAILED


def classify(error: BaseException | None, *, worker: str) -> Outcome:
    """The outcome of an attempt on ``worker`` that raised ``error`` (None: it succeeded).

    The model's and the input's faults end the task; anything else is this
    worker's own trouble (the API, a download, a bug), so another attempt,
    possibly elsewhere, is worth it.
    """
    if error is None:
        return Outcome(Reason.COMPLETED, f"completed on worker {worker}")
    if isinstance(error, UnknownModelError):
        return Outcome(Reason.UNKNOWN_MODEL, str(error))
    if isinstance(error, ValidationError):
        return Outcome(Reason.INVALID_INPUT, str(error))
    if isinstance(error, ModelError):
        return Outcome(Reason.MODEL_ERROR, str(error))
    message = f"worker {worker} could not finish: {type(error).__name__}: {error}"
    return Outcome(Reason.WORKER_ERROR, message, retryable=True)


def check_report(task: TaskRecord, *, worker_id: str, attempt: int) -> bool:
    """Whether a worker's report about ``attempt`` may be applied.

    False for a repeat of a report already applied (answer it with the
    task as it is); :class:`ConflictError` for a report from an attempt that
    is no longer current (the task was given up on, retried or cancelled).
    """
    current = task.worker_id == worker_id and task.attempts == attempt
    if task.terminal and current and task.history and task.history[-1].reported:
        return False
    if task.phase != Phase.RUNNING or not current:
        raise ConflictError(
            f"task {task.id} is {task.phase.value} (attempt {task.attempts}, worker {task.worker_id}); "
            f"the result of attempt {attempt} from worker {worker_id} is discarded"
        )
    return True


def report(
    task: TaskRecord,
    outcome: Outcome,
    *,
    now: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
    result: dict[str, Any] | None = None,
    compute_ms: float | None = None,
) -> TaskRecord:
    """Apply a worker's outcome to its running attempt."""
    if outcome.retryable:
        return requeue_or_fail(task, reason=outcome.reason, why=outcome.message, now=now, policy=policy, rng=rng,
                               compute_ms=compute_ms, reported=True)
    phase = Phase.SUCCEEDED if outcome.succeeded else Phase.FAILED
    return finish(task, phase=phase, reason=outcome.reason, message=outcome.message, now=now,
                  result=(result or {}) if outcome.succeeded else None, compute_ms=compute_ms, reported=True)


# Placement ----------------------------------------------------------------------------------


class Placeable(Protocol):
    """What the placement plan reads from a queued task."""

    @property
    def priority(self) -> int: ...

    @property
    def requirements(self) -> Requirements: ...

    @property
    def age(self) -> tuple[Any, ...]: ...


T = TypeVar("T", bound=Placeable)


def plan_assignments(
    queued: Iterable[T], workers: Sequence[WorkerInfo], strategy: Strategy
) -> list[tuple[T, WorkerInfo]]:
    """Place ready queued tasks on workers, highest priority first, then oldest first.

    Stops as soon as no worker has room at all (so lower priorities never
    overtake a task that only waits for capacity); a task that waits for a
    worker with special capabilities does not hold the others back. Ties in
    age keep the order given (the sort is stable).
    """
    pool = list(workers)
    if not any(w.accepting and w.assigned < w.capacity for w in pool):
        return []  # the common case under load: every slot taken, nothing to sort
    ready = sorted(queued, key=lambda t: (-t.priority, t.age))
    plan: list[tuple[T, WorkerInfo]] = []
    for task in ready:
        if not any(w.accepting and w.assigned < w.capacity for w in pool):
            break
        chosen = strategy.pick(task.requirements, pool)
        if chosen is None:
            continue
        plan.append((task, chosen))
        pool = [dataclasses.replace(w, assigned=w.assigned + 1) if w.id == chosen.id else w for w in pool]
    return plan
