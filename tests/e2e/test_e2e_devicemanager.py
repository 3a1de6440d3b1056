"""The stand-in's device manager: a node agent registered on a simulated node sets its GPU capacity.

Local cluster only; no images: ``legacygpu node-agent`` runs as a local process against one simulated
node's folder (e2e/e2ecluster/nodefs.py: fixture sysfs, fake /dev, the kubelet's device-plugin
folder, reached through the stand-in's short socket link). Real: the agent, its gRPC with the
stand-in's kubelet.sock, the API server, the scheduler. Checked, in order: the node's capacity and
allocatable follow the agent's ``ListAndWatch`` (3 fixture cards where the simulator has 2; one card
losing its render node leaves allocatable 2); the scheduler places a 2-GPU pod on the node and
leaves a 3-GPU one Pending; when the agent stops, the node goes back to the simulator's count.
The chart's DaemonSet running the agent from its image is tests/e2e/test_chart_images.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ecluster import Kube
from e2ecluster.devicemanager import STATE_FILE, short_dir
from e2ecluster.nodefs import ensure_tree, node_root
from e2ecluster.nodes import SIMULATED_LABEL

from legacygpu.testing.sysfs_tree import NodeTree, rx580

LEGACYGPU = str(Path(sys.executable).parent / "legacygpu")
RESOURCE = "legacygpu.io/gpu"


def _capacity(kube: Kube, node: str) -> tuple[str | None, str | None]:
    status = kube.core.read_node_status(node).status
    return (status.capacity or {}).get(RESOURCE), (status.allocatable or {}).get(RESOURCE)


def _pod(name: str, node: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox", "command": ["true"],
                                     "resources": {"limits": {RESOURCE: str(gpus)}}}]}}  # fmt: skip


@pytest.fixture
def agent_node(simulated_kube: Kube) -> Iterator[tuple[str, NodeTree]]:
    kube = simulated_kube
    node = sorted(n.metadata.name for n in kube.core.list_node(label_selector=f"{SIMULATED_LABEL}=true").items)[-1]
    assert kube.cluster is not None
    tree = ensure_tree(node_root(kube.cluster.root, node), 2)
    extra = tree.plug(rx580(2))
    try:
        yield node, tree
    finally:
        tree.plug(rx580(1))  # puts back what a test took away
        tree.unplug(extra.pci_address)


@pytest.mark.timeout(300)
def test_an_agent_on_the_node_sets_its_gpu_capacity(simulated_kube: Kube, agent_node: tuple[str, NodeTree],
                                                     namespace: str) -> None:  # fmt: skip
    kube, (node, tree) = simulated_kube, agent_node
    assert kube.cluster is not None
    assert _capacity(kube, node) == ("2", "2")  # the simulator's fixed count before any agent
    folder = node_root(kube.cluster.root, node)
    log = open(folder / "agent.log", "w")  # noqa: SIM115
    agent = subprocess.Popen([LEGACYGPU, "node-agent", f"--kubelet-dir={short_dir(kube.cluster.root) / node}",
                              f"--sysfs-root={tree.sysfs}", f"--dev-root={tree.dev}", "--health-checks=sysfs",
                              "--health-interval=0.5"], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        kube.wait_for(lambda: _capacity(kube, node) == ("3", "3"), timeout=60, what="capacity 3 from the agent")
        state = json.loads((folder / STATE_FILE).read_text())
        assert state["registration"]["resourceName"] == RESOURCE
        assert sorted(d["id"] for d in state["devices"]) == ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0"]

        (tree.dev / "dri" / "renderD129").unlink()  # card 0000:02:00.0 loses its render node: Unhealthy
        kube.wait_for(lambda: _capacity(kube, node) == ("3", "2"), timeout=60, what="allocatable 2")
        health = {d["id"]: d["health"] for d in json.loads((folder / STATE_FILE).read_text())["devices"]}
        assert health["0000:02:00.0"] == "Unhealthy" and list(health.values()).count("Healthy") == 2

        kube.apply(_pod("fits", node, 2), namespace=namespace)
        kube.apply(_pod("too-big", node, 3), namespace=namespace)
        kube.wait_for(lambda: kube.core.read_namespaced_pod("fits", namespace).spec.node_name == node, timeout=60,
                      what="the 2-GPU pod scheduled")  # fmt: skip

        def refused() -> bool:
            pod = kube.core.read_namespaced_pod("too-big", namespace)
            return pod.spec.node_name is None and any(
                c.type == "PodScheduled" and c.status == "False" and f"Insufficient {RESOURCE}" in (c.message or "")
                for c in pod.status.conditions or [])  # fmt: skip

        kube.wait_for(refused, timeout=60, what="the 3-GPU pod refused for Insufficient legacygpu.io/gpu")
        assert kube.core.read_namespaced_pod("too-big", namespace).spec.node_name is None
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        log.close()
    assert code == 0, (folder / "agent.log").read_text()
    kube.wait_for(lambda: _capacity(kube, node) == ("2", "2"), timeout=60, what="the simulator's count back")
    assert json.loads((folder / STATE_FILE).read_text())["devices"] == []
