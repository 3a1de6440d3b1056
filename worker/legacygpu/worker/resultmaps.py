"""Result ConfigMaps a worker writes for a task: one create, or on a retry the same entries again.

Both a task whose result is over the inline limit (:class:`~legacygpu.worker.kube.KubeWorker`)
and a batch shard (:mod:`legacygpu.worker.batch`) store results in a ConfigMap owned by their
task (the garbage collector removes it with the task) and labelled with the worker's pod. A
second run of the same task (its worker died after writing, the task was retried) finds the
ConfigMap there (409) and overwrites its entries with a merge patch: each key still has one value.
A ConfigMap of that name that is not a worker's (no worker label, not owned by the task) is
someone else's: it is left alone and the task fails ``InvalidInput`` naming it (taking it over
would make the task its owner, and the garbage collector would delete it with the task).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.client import MERGE_PATCH
from legacygpu.core.kube.contract import API_VERSION, LABEL_WORKER, TASK_KIND
from legacygpu.core.kube.errors import ApiError

__all__ = ["ApiHost", "write_configmap"]


class ApiHost(Protocol):
    """What writing needs of the worker: its namespace, pod name and API access."""

    namespace: str
    pod: str

    def request(self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
                content_type: str | None = None, timeout: Any = 30) -> Any: ...


def write_configmap(host: ApiHost, task: Mapping[str, Any], name: str, data: dict[str, str]) -> None:
    """Create ConfigMap ``name`` holding ``data``, owned by ``task``; or overwrite those entries if it exists."""
    meta = task["metadata"]
    owner = [{"apiVersion": API_VERSION, "kind": TASK_KIND, "name": meta["name"], "uid": meta["uid"]}]
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": host.namespace, "labels": {LABEL_WORKER: host.pod},
                     "ownerReferences": owner},
        "data": data,
    }
    path = f"/api/v1/namespaces/{host.namespace}/configmaps"
    try:
        host.request("POST", path, body=configmap)
    except ApiError as exc:
        if exc.status != 409:
            raise
        existing = host.request("GET", f"{path}/{name}")
        labels = (existing.get("metadata") or {}).get("labels") or {}
        owners = (existing.get("metadata") or {}).get("ownerReferences") or []
        if LABEL_WORKER not in labels and not any(o.get("uid") == meta["uid"] for o in owners):
            raise ValidationError(f"ConfigMap {host.namespace}/{name} exists and is not a result of this task "
                                  "(no worker label, not owned by it): left as it is; remove or rename it, or "
                                  "give the task (or its spec.batch.output) another name") from exc
        # Ours: a merge patch replaces the owner list and overwrites each key, the same entries as before.
        host.request("PATCH", f"{path}/{name}", body={"metadata": {"ownerReferences": owner}, "data": data},
                     content_type=MERGE_PATCH)
