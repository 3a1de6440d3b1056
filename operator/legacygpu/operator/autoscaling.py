"""How many workers a cluster with ``spec.autoscaling`` wants (a pure function).

The load is the cluster's tasks waiting (``Pending``/``Queued``) plus those in flight
(``Scheduled``/``Running``, what the workers hold) plus the real-time (/v2) requests the
live workers report in flight (``inflightRequests`` in their stats annotation,
:func:`requests_in_flight`); the wanted number of workers is
``ceil(load / targetLoadPerWorker)`` clamped to ``[minReplicas, maxReplicas]``:

* **up** at once: a queue should not wait for a timer;
* **down** only once the wanted number has stayed below the current one for
  ``scaleDownDelaySeconds`` (the time it first dropped is kept in the cluster's
  ``status.autoscaling.lowSince``, so a new leader keeps counting where the last
  one stopped), and then to the wanted number at that moment;
* otherwise unchanged.

The operator applies a change by writing ``spec.replicas`` (what ``kubectl scale``
and the ``/scale`` subresource write too: with ``spec.autoscaling`` set the operator
owns that field, so an HPA should drive a cluster without ``spec.autoscaling``), posts
a ``Scaled`` Event and sets the ``Autoscaled`` condition with the reason.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legacygpu.operator.clusterstate import PodView

__all__ = ["AutoscaleDecision", "ScaleReason", "autoscale", "autoscaling_spec", "requests_in_flight"]


class ScaleReason:
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    WAITING_TO_SCALE_DOWN = "WaitingToScaleDown"
    AT_TARGET = "AtTarget"
    CHANGES = (SCALED_UP, SCALED_DOWN)


@dataclass(frozen=True)
class AutoscaleDecision:
    replicas: int
    """The ``spec.replicas`` to have (the current one when nothing changes)."""
    reason: str
    message: str
    low_since: str | None
    """When the wanted number first dropped below the current one (RFC 3339), kept in status."""

    def changes(self, current: int) -> bool:
        return self.replicas != current


def autoscaling_spec(spec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``spec.autoscaling`` when it is set, else None (the cluster is scaled by hand or by an HPA)."""
    value = spec.get("autoscaling")
    return value if isinstance(value, Mapping) else None


def requests_in_flight(pods: Iterable[PodView]) -> int:
    """The real-time requests the live worker pods last reported in flight (a bad value counts 0)."""
    total = 0
    for pod in pods:
        value = pod.stats.get("inflightRequests", 0)
        if pod.live and isinstance(value, int) and value > 0:
            total += value
    return total


def _format(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def autoscale(
    autoscaling: Mapping[str, Any],
    *,
    current: int,
    waiting: int,
    in_flight: int,
    low_since: str | None,
    now: datetime.datetime,
) -> AutoscaleDecision:
    """The replicas wanted now from the load and ``autoscaling`` (see the module docstring)."""
    low = int(autoscaling.get("minReplicas", 1))
    high = int(autoscaling.get("maxReplicas", max(low, 1)))
    target = max(1, int(autoscaling.get("targetLoadPerWorker", 4)))
    delay = float(autoscaling.get("scaleDownDelaySeconds", 60))
    load = waiting + in_flight
    wanted = max(low, min(high, math.ceil(load / target)))
    about = f"{waiting} waiting + {in_flight} in flight, target {target} per worker"
    if wanted > current:
        return AutoscaleDecision(wanted, ScaleReason.SCALED_UP, f"{current} -> {wanted} workers: {about}", None)
    if wanted == current:
        return AutoscaleDecision(current, ScaleReason.AT_TARGET, f"{current} workers: {about}", None)
    since = _parse(low_since) or now
    waited = (now - since).total_seconds()
    if waited >= delay:
        message = f"{current} -> {wanted} workers after {waited:.0f}s below: {about}"
        return AutoscaleDecision(wanted, ScaleReason.SCALED_DOWN, message, None)
    message = f"{current} workers, {wanted} wanted: scaling down in {delay - waited:.0f}s unless load returns ({about})"
    return AutoscaleDecision(current, ScaleReason.WAITING_TO_SCALE_DOWN, message, _format(since))
