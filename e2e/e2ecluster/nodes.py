"""Simulated GPU nodes: Node objects, their status and their heartbeats.

Design: a kubelet registers its Node, reports capacity/allocatable and conditions in
``status``, and renews a Lease in ``kube-node-lease`` every 10 s; the node lifecycle
controller in kube-controller-manager marks a node NotReady (and taints it) when both go
stale for ``--node-monitor-grace-period``. Here there is no kubelet, so the simulator
calls :func:`ensure_nodes` once and :func:`heartbeat` periodically, with the same
objects a kubelet would write. Each node offers ``pool.gpus`` of the extended resource
``pool.resource`` and carries the labels the operator's default node affinity looks for
(``legacygpu.io/gpu.present=true``, ``legacygpu.io/gpu.family=<family>``), plus
``e2e.legacygpu.io/simulated=true`` so the simulator recognises its own nodes.
Node addresses are distinct loopback addresses (``127.0.100.<n>``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2ecluster.cluster import NodePool

__all__ = ["SIMULATED_LABEL", "ensure_nodes", "heartbeat", "node_address", "node_names"]

log = logging.getLogger(__name__)

SIMULATED_LABEL = "e2e.legacygpu.io/simulated"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40


def node_names(pool: NodePool) -> list[str]:
    return [f"{pool.prefix}-{i}" for i in range(pool.count)]


def node_address(pool: NodePool, name: str) -> str:
    return f"127.0.100.{node_names(pool).index(name) + 1}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _conditions(now: str) -> list[dict[str, str]]:
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": "simulated by e2ecluster (no kubelet)",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, status, reason in healthy
    ]


def _status(pool: NodePool, name: str, version: str) -> dict[str, Any]:
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": pool.pods, pool.resource: str(pool.gpus)}
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": _conditions(_now()),
        "addresses": [
            {"type": "InternalIP", "address": node_address(pool, name)},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "machineID": name,
            "systemUUID": name,
            "bootID": name,
            "kernelVersion": "simulated",
            "osImage": "e2ecluster simulated node",
            "containerRuntimeVersion": "e2ecluster://local-process",
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def _body(pool: NodePool, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "legacygpu.io/gpu.present": "true",
                "legacygpu.io/gpu.family": pool.family,
                SIMULATED_LABEL: "true",
            },
        },
        "spec": {},
    }


def ensure_nodes(core: client.CoreV1Api, pool: NodePool, *, version: str = "v0.0.0-sim") -> list[str]:
    """Create (or refresh) the pool's Node objects with Ready status; return their names."""
    names = node_names(pool)
    for name in names:
        try:
            core.create_node(_body(pool, name))
            log.info("registered node %s", name)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.patch_node(name, {"metadata": {"labels": _body(pool, name)["metadata"]["labels"]}})
        core.patch_node_status(name, {"status": _status(pool, name, version)})
    return names


def heartbeat(
    core: client.CoreV1Api,
    coordination: client.CoordinationV1Api,
    names: list[str],
    *,
    with_status: bool,
) -> None:
    """Renew each node's Lease (and, when ``with_status``, its conditions' heartbeat)."""
    for name in names:
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _micro_now()}
        try:
            coordination.patch_namespaced_lease(name, LEASE_NAMESPACE, {"spec": spec})
        except ApiException as exc:
            if exc.status != 404:
                raise
            node = core.read_node(name)
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node.metadata.uid}
            body = {"metadata": {"name": name, "ownerReferences": [owner]}, "spec": spec}
            coordination.create_namespaced_lease(LEASE_NAMESPACE, body)
        if with_status:
            now = _now()
            node = core.read_node_status(name)
            conditions = []
            for cond in node.status.conditions or []:
                transition = cond.last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
                healthy = {"Ready": "True"}.get(cond.type, "False")
                if cond.status != healthy:
                    transition = now
                conditions.append(
                    {"type": cond.type, "status": healthy, "reason": cond.reason or "", "message": cond.message or "",
                     "lastHeartbeatTime": now, "lastTransitionTime": transition}
                )  # fmt: skip
            core.patch_node_status(name, {"status": {"conditions": conditions or _conditions(now)}})
