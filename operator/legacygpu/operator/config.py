"""The operator's settings: flags of ``legacygpu operator run`` and ``LEGACYGPU_OPERATOR_*`` variables.

One frozen dataclass handed to every part through the runtime (kopf's
``memo``), so tests can run several operators with different settings in
one process.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from legacygpu.operator.schema import DNS_LABEL

__all__ = ["OperatorConfig", "namespace_problem"]


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LEGACYGPU_OPERATOR_{name}", default)


def _ttl(value: str) -> int | None:
    seconds = int(value)
    return None if seconds < 0 else seconds


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` cannot be served, or None: it must be a namespace's name, not a pattern."""
    if len(namespace) > 63 or not re.fullmatch(DNS_LABEL, namespace):
        return (f"namespace {namespace!r} is not a namespace name (lower-case letters, digits and '-', "
                "at most 63, starting and ending with a letter or digit; no patterns)")
    return None


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator can be told."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty serves the whole cluster."""
    worker_image: str = field(default_factory=lambda: _env("WORKER_IMAGE", "legacygpu/worker:0.1.0"))
    worker_service_account: str = field(default_factory=lambda: _env("WORKER_SERVICE_ACCOUNT", "legacygpu-worker"))
    """ServiceAccount of worker pods whose cluster names none (``legacygpu operator rbac`` makes this one)."""
    health_port: int = 8081
    """Port of the worker's /healthz and /readyz (readiness probe)."""
    metrics_port: int | None = None
    """Port of the operator's /metrics; None serves none."""
    metrics_host: str = "0.0.0.0"
    leader_election: bool = False
    lease_name: str = "legacygpu-operator"
    lease_namespace: str = field(default_factory=lambda: _env("LEASE_NAMESPACE", "default"))
    identity: str = field(default_factory=lambda: _env("IDENTITY", socket.gethostname()))
    lease_seconds: float = 15.0
    renew_seconds: float = 5.0
    resync_seconds: float = 10.0
    """Longest a cluster's reconcile loop sleeps without an event."""
    cluster_not_found_grace_seconds: float = 5.0
    """How long a new task may name a cluster the operator has not seen before it fails."""
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    api_concurrency: int = 8
    """Parallel API calls a reconcile pass makes."""
    finished_task_ttl_seconds: int | None = field(default_factory=lambda: _ttl(_env("FINISHED_TASK_TTL", "3600")))
    """Delete a finished task this long after it finished unless its spec.ttlSecondsAfterFinished says
    otherwise; None keeps finished tasks (``--finished-task-ttl -1``)."""
    task_events: bool = True
    """Post Kubernetes Events for task transitions (cluster events are always posted)."""

    def __post_init__(self) -> None:
        # The operator watches each namespace by its path: a name with a blank or a glob would be
        # refused (404) on every try, forever, so it is refused here, once, instead.
        for namespace in self.namespaces:
            if (problem := namespace_problem(namespace)) is not None:
                raise ValueError(problem)
