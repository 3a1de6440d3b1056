"""Kubernetes Events: the reasons the operator reports, and one way to post them.

Events go through kopf's poster (queued, rate-limited, never failing a
handler). Reasons are CamelCase constants; ``kubectl describe icl/NAME``
shows the cluster's story (scaled, workers created, replaced, removed,
conditions changing: such an Event carries the condition's own reason),
``kubectl describe itask/NAME`` the task's (assigned, requeued, failed by
the operator).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

__all__ = ["EventReason", "post"]

log = logging.getLogger(__name__)


class EventReason:
    WORKER_CREATED = "WorkerCreated"
    WORKER_DELETED = "WorkerDeleted"
    WORKER_REPLACED = "WorkerReplaced"
    WORKER_ROLLED = "WorkerRolled"
    """A worker pod built from an older pod template was replaced (rolling update)."""
    SERVICE_CREATED = "ServiceCreated"
    SCALED = "Scaled"
    """status.desiredWorkers changed (replicas, min/max, suspend); the message says old -> new."""
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    INVALID_SPEC = "InvalidSpec"
    CLUSTER_DELETED = "ClusterDeleted"


def post(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Queue one Event about ``body`` (needs ``apiVersion``, ``kind`` and ``metadata``)."""
    try:
        kopf.event(dict(body), type=type_, reason=reason, message=message)  # type: ignore[arg-type]
    except Exception:  # events are best effort: never let one break a reconcile
        log.exception("could not queue event %s for %s", reason, body.get("metadata", {}).get("name"))
