"""The task state machine, shared by the local coordinator and the operator.

A task moves through these phases::

    Pending ──► Queued ──► Scheduled ──► Running ──► Succeeded
       │          ▲  │         │  │         │  │
       │          │  │         │  │         │  └──► Failed
       │          └──┼─────────┘  │         │
       │          ▲  │  (worker lost, drained)
       │          └──┼────────────┼─────────┘ (retry: worker lost or a retryable error)
       └─────────────┴────────────┴──────────────► Failed | Cancelled

``Pending`` means accepted but not yet validated against a cluster; ``Queued``
means waiting for a worker (possibly until a retry backoff has passed);
``Scheduled`` means assigned to a worker that has not yet picked it up;
``Running`` means the worker has it. The three terminal phases never change
again, which is what makes result writes idempotent: a completion for an
attempt that is no longer current is refused instead of applied twice.

Everything here is pure: no I/O, no clocks except those passed in, so the
same rules serve SQLite rows and Kubernetes status alike.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from legacygpu.core.errors import ConflictError

__all__ = [
    "ASSIGNED_PHASES",
    "TERMINAL_PHASES",
    "Phase",
    "Reason",
    "RetryPolicy",
    "attempts_left",
    "check_transition",
    "is_terminal",
]


class Phase(enum.StrEnum):
    """Where a task is in its life."""

    PENDING = "Pending"
    QUEUED = "Queued"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


class Reason(enum.StrEnum):
    """Machine-readable reasons recorded with a phase change (CamelCase, as Kubernetes does)."""

    ACCEPTED = "Accepted"
    ASSIGNED = "Assigned"
    STARTED = "Started"
    COMPLETED = "Completed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    WORKER_LOST = "WorkerLost"
    """The worker stopped answering (missed heartbeats, pod gone) while it held the task."""
    WORKER_ERROR = "WorkerError"
    """The worker hit an unexpected error of its own (not the model's, not the input's): retried elsewhere."""
    WORKER_DRAINED = "WorkerDrained"
    MODEL_ERROR = "ModelError"
    INVALID_INPUT = "InvalidInput"
    UNKNOWN_MODEL = "UnknownModel"
    CLUSTER_NOT_FOUND = "ClusterNotFound"
    RESULT_TOO_LARGE = "ResultTooLarge"
    """The model ran, but its result is larger than the store for results can hold (Kubernetes: a ConfigMap)."""
    CANCELLED = "Cancelled"
    INPUTS_FAILED = "InputsFailed"
    """A batch task: more of its inputs failed than ``spec.batch.maxFailedInputs`` allows."""


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})
ASSIGNED_PHASES = frozenset({Phase.SCHEDULED, Phase.RUNNING})
"""Phases in which a task holds a place on a worker (what counts against its capacity)."""

_ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.QUEUED, Phase.FAILED, Phase.CANCELLED}),
    Phase.QUEUED: frozenset({Phase.SCHEDULED, Phase.FAILED, Phase.CANCELLED}),
    Phase.SCHEDULED: frozenset({Phase.RUNNING, Phase.QUEUED, Phase.FAILED, Phase.CANCELLED}),
    Phase.RUNNING: frozenset({Phase.SUCCEEDED, Phase.QUEUED, Phase.FAILED, Phase.CANCELLED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.CANCELLED: frozenset(),
}


def is_terminal(phase: Phase | str) -> bool:
    """True for the phases a task never leaves."""
    return Phase(phase) in TERMINAL_PHASES


def check_transition(current: Phase | str, target: Phase | str) -> None:
    """Raise :class:`ConflictError` unless ``current → target`` is allowed."""
    current, target = Phase(current), Phase(target)
    if target not in _ALLOWED[current]:
        raise ConflictError(f"a task cannot go from {current.value} to {target.value}")


def attempts_left(attempts: int, max_retries: int) -> int:
    """How many more attempts a task may make: the first run plus ``max_retries`` retries."""
    return max(0, 1 + max_retries - attempts)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter between attempts.

    The delay before attempt ``n + 1`` (after ``n`` attempts) is drawn uniformly
    from ``[d/2, d]`` where ``d = min(cap, base * 2 ** (n - 1))`` ("equal
    jitter"): retries of many tasks lost together spread out instead of
    hitting the next worker at once, and no retry waits less than half the
    nominal delay.
    """

    base_seconds: float = 1.0
    cap_seconds: float = 60.0

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        if attempts <= 0:
            return 0.0
        nominal = min(self.cap_seconds, self.base_seconds * 2.0 ** (attempts - 1))
        draw = rng.random() if rng is not None else random.random()
        return nominal / 2 + draw * nominal / 2
