"""What both backends show of a task, built once from the lifecycle's record.

The local backend reads a SQLite row and the Kubernetes backend an
``InferenceTask`` into the same :class:`~legacygpu.core.lifecycle.TaskRecord`;
:func:`task_public` turns that record into the API's :class:`TaskPublic`, so
the two backends cannot drift in what ``history``, ``latency_ms`` or
``compute_ms`` mean. :func:`percentile` serves both summaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import overload

from legacygpu.api.schemas import AttemptRecord, TaskPublic
from legacygpu.core.lifecycle import TaskRecord

__all__ = ["percentile", "task_public", "utc"]


@overload
def utc(epoch: float) -> datetime: ...
@overload
def utc(epoch: float | None) -> datetime | None: ...
def utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def task_public(task: TaskRecord, *, with_result: bool = True) -> TaskPublic:
    history = [
        AttemptRecord(
            attempt=a.attempt, worker_id=a.worker_id or None, outcome=a.outcome,
            started_at=utc(a.started_at), finished_at=utc(a.finished_at),
        )
        for a in task.history
    ]
    return TaskPublic(
        id=task.id,
        model=task.model,
        phase=task.phase,
        reason=task.reason or None,
        message=task.message or None,
        priority=task.priority,
        worker_id=task.worker_id,
        attempts=task.attempts,
        max_retries=task.max_retries,
        timeout_seconds=task.timeout_seconds or 0,
        created_at=utc(task.created_at),
        scheduled_at=utc(task.scheduled_at),
        started_at=utc(task.started_at),
        finished_at=utc(task.finished_at),
        latency_ms=task.latency_ms,
        compute_ms=task.compute_ms,
        history=history,
        result=task.result if with_result else None,
    )
