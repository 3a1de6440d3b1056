"""Where the facade's ``/v2`` requests may go: the serving endpoints of the cluster's workers.

The forwarding code (:mod:`legacygpu.api.forwarding`) picks a worker and
retries the same way in both modes; only how the workers are found differs,
and that is this module's one question, asked through
:func:`serving_endpoints`:

* **local mode**: the backend's registered workers that are ``active`` and
  announced a REST endpoint when they registered (``stats.serving.rest``);
  their loaded models are ``stats.models_loaded``;
* **Kubernetes mode**: a backend that can answer for itself (it has a
  ``serving_endpoints()`` coroutine, as
  :class:`~legacygpu.api.backends.kubernetes.KubernetesBackend` does from
  its pod informer) is asked directly. Its endpoints are the Ready worker
  pods of its InferenceCluster, built by :func:`pod_endpoint`: the pod IP
  and the container ports named :data:`~legacygpu.core.kube.contract.PORT_HTTP`
  and ``PORT_GRPC`` from the pod spec, the models from the worker's stats annotation, else
  the cluster's ``spec.models`` (a pod turns Ready only once it has loaded
  those). A pod being deleted, drained, not Running or not Ready receives no
  requests.

Every endpoint has one shape, :class:`ServingEndpoint`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.api.schemas import WorkerPublic
from legacygpu.core.kube.contract import (
    ANNOTATION_DRAIN,
    ANNOTATION_WORKER_STATS,
    PORT_GRPC,
    PORT_HTTP,
    SERVING_GRPC_PORT,
    SERVING_HTTP_PORT,
)

__all__ = ["ServingEndpoint", "pod_endpoint", "registered_endpoints", "serving_endpoints"]


@dataclass(frozen=True)
class ServingEndpoint:
    """One worker's Open Inference Protocol REST endpoint."""

    name: str
    """The worker's name (local worker name, or pod name)."""
    url: str
    """Base URL without a trailing slash: ``http://10.1.2.3:8000``."""
    models: frozenset[str]
    """Models the worker reports loaded; empty when it reports none."""
    grpc: str | None = None
    """``host:port`` of the worker's gRPC endpoint, when it has one."""


def registered_endpoints(workers: Iterable[WorkerPublic]) -> list[ServingEndpoint]:
    """Local mode: active workers that announced a REST endpoint when they registered."""
    found = []
    for worker in workers:
        stats = worker.stats if isinstance(worker.stats, dict) else {}
        serving = stats.get("serving")
        if worker.state == "active" and isinstance(serving, dict) and isinstance(serving.get("rest"), str):
            loaded = stats.get("models_loaded") or []
            grpc = serving.get("grpc") if isinstance(serving.get("grpc"), str) else None
            found.append(ServingEndpoint(worker.name, serving["rest"].rstrip("/"), frozenset(loaded), grpc))
    return found


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
    return status.get("phase") == "Running" and conditions.get("Ready") == "True"


def _port(pod: Mapping[str, Any], name: str, default: int) -> int:
    """The container port called ``name`` in the pod's spec (the operator declares them), else ``default``."""
    for container in (pod.get("spec") or {}).get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == name and port.get("containerPort"):
                return int(port["containerPort"])
    return default


def pod_endpoint(pod: Mapping[str, Any], default_models: Sequence[str] = ()) -> ServingEndpoint | None:
    """Kubernetes mode: a worker pod's endpoint, or None when the pod should get no requests now."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    ip = (pod.get("status") or {}).get("podIP")
    if meta.get("deletionTimestamp") or annotations.get(ANNOTATION_DRAIN) == "true" or not ip or not _ready(pod):
        return None
    try:
        stats = json.loads(annotations.get(ANNOTATION_WORKER_STATS) or "{}")
    except ValueError:
        stats = {}
    reported = stats.get("models") if isinstance(stats, dict) else None
    models = reported if isinstance(reported, list) and reported else list(default_models)
    host = f"[{ip}]" if ":" in ip else ip
    return ServingEndpoint(str(meta.get("name", "")), f"http://{host}:{_port(pod, PORT_HTTP, SERVING_HTTP_PORT)}",
                           frozenset(models), f"{host}:{_port(pod, PORT_GRPC, SERVING_GRPC_PORT)}")


async def serving_endpoints(backend: ClusterBackend) -> list[ServingEndpoint]:
    """The endpoints serving now: the backend's own answer if it has one, else its registered workers."""
    own = getattr(backend, "serving_endpoints", None)
    if own is not None:
        return list(await own())
    return registered_endpoints(await backend.list_workers())
