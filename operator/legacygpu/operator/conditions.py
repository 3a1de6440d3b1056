"""Status conditions: their types, their reasons, and how a list of them is updated.

Conditions follow ``metav1.Condition``: one entry per type, ``status``
True/False/Unknown, a CamelCase ``reason``, a ``message``, and a
``lastTransitionTime`` that changes only when ``status`` does, so
``kubectl wait --for=condition=Ready`` and alerting on "Degraded for 10
minutes" both work. Types and reasons are constants here, next to the
schema that lists them, never free strings in handlers.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from legacygpu.core.kube.contract import format_time

__all__ = [
    "CLUSTER_CONDITIONS",
    "ClusterCondition",
    "ConditionReason",
    "Desired",
    "conditions_changed",
    "find",
    "merge_conditions",
]


class ClusterCondition:
    READY = "Ready"
    """The cluster takes tasks: at least one worker is ready and it is not suspended."""
    WORKERS_READY = "WorkersReady"
    """Every desired worker pod exists and is ready."""
    DEGRADED = "Degraded"
    """Some worker cannot work: unschedulable, crash-looping, failed, refused by the API server, forbidden
    by RBAC, or unable to load a model it serves."""
    SUSPENDED = "Suspended"
    """spec.suspend is true and the workers are removed."""
    AUTOSCALED = "Autoscaled"
    """With spec.autoscaling: what the autoscaler last decided and why (reason ScaledUp, ScaledDown,
    WaitingToScaleDown or AtTarget)."""


CLUSTER_CONDITIONS = (
    ClusterCondition.READY,
    ClusterCondition.WORKERS_READY,
    ClusterCondition.DEGRADED,
    ClusterCondition.SUSPENDED,
)


class ConditionReason:
    WORKERS_AVAILABLE = "WorkersAvailable"
    NO_READY_WORKERS = "NoReadyWorkers"
    ALL_WORKERS_READY = "AllWorkersReady"
    WORKERS_NOT_READY = "WorkersNotReady"
    UNSCHEDULABLE = "Unschedulable"
    WORKER_FAILED = "WorkerFailed"
    CONTAINER_WAITING = "ContainerWaiting"
    AS_EXPECTED = "AsExpected"
    SUSPENDED = "Suspended"
    NOT_SUSPENDED = "NotSuspended"
    INVALID_SPEC = "InvalidSpec"
    POD_CREATE_FAILED = "PodCreateFailed"
    """The API server refused a worker pod (quota, admission, an invalid pass-through field)."""
    SERVICE_CREATE_FAILED = "ServiceCreateFailed"
    """The API server refused the headless Service."""
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    """A worker could not load a model of spec.models."""
    WORKER_FORBIDDEN = "WorkerForbidden"
    """The workers' ServiceAccount may not do what a worker must (they would get 403)."""


@dataclass(frozen=True)
class Desired:
    """A condition as the reconciler wants it now."""

    type: str
    status: bool
    reason: str
    message: str


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    desired: Iterable[Desired],
    *,
    now: datetime.datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The new conditions list: ``lastTransitionTime`` kept unless the status flips."""
    previous = list(previous or ())
    result: list[dict[str, Any]] = []
    for want in desired:
        status = "True" if want.status else "False"
        old = find(previous, want.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        entry: dict[str, Any] = {
            "type": want.type,
            "status": status,
            "reason": want.reason,
            "message": want.message,
            "lastTransitionTime": since or format_time(now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        result.append(entry)
    return result


def conditions_changed(old: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]]) -> list[str]:
    """Types whose status, reason or message changed: what deserves an Event."""
    changed = []
    for condition in new:
        before = find(old, condition["type"])
        if before is None or any(before.get(k) != condition.get(k) for k in ("status", "reason", "message")):
            changed.append(condition["type"])
    return changed
