"""Kubernetes Events: the reasons the operator reports, and one way to post them.

Events go through kopf's poster (queued, rate-limited, never failing a
handler) where kopf runs the code (its handlers and daemons). Code that
kopf does not run (the operator's own task watch and what it spawns, such
as the orphan check) has no poster: :func:`post` says so, and
:func:`create` writes the Event with the operator's client instead.

Reasons are CamelCase constants; ``kubectl describe icl/NAME`` shows the
cluster's story (scaled, workers created, replaced, removed, conditions
changing: such an Event carries the condition's own reason), ``kubectl
describe itask/NAME`` the task's (assigned, requeued, failed by the operator).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from legacygpu.core.kube.client import KubeApi
from legacygpu.core.kube.contract import event_manifest
from legacygpu.core.kube.errors import ApiError

__all__ = ["COMPONENT", "EventReason", "create", "post"]

COMPONENT = "legacygpu-operator"
"""The Events' reporting component (kopf's ``settings.posting.reporting_component`` too)."""

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


def post(body: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
    """Queue one Event about ``body`` (needs ``apiVersion``, ``kind`` and ``metadata``).

    False when not called from code kopf runs (kopf has no poster there): use :func:`create`.
    """
    try:
        kopf.event(dict(body), type=type_, reason=reason, message=message)  # type: ignore[arg-type]
    except LookupError:  # kopf's context variables (its settings, its event queue) are unset here
        return False
    except Exception:  # events are best effort: never let one break a reconcile
        log.exception("could not queue event %s for %s", reason, body.get("metadata", {}).get("name"))
    return True


async def create(api: KubeApi, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Write one Event about ``body`` now (best effort: a refusal is logged, never raised)."""
    meta = body.get("metadata") or {}
    event = event_manifest(body, type_, reason, message, component=COMPONENT)
    try:
        await api.create("", "v1", "events", meta.get("namespace") or "default", event)
    except ApiError as exc:
        log.warning("could not post event %s for %s: %s", reason, meta.get("name"), exc)
