"""The node agent: a kubelet device plugin and node labeller for legacy OpenCL GPUs.

Modules, in dependency order::

    v1beta1/      the Device Plugin API v1beta1 (upstream .proto, generated code)
    errors        the agent's exception tree
    pciids        PCI id -> family, model, compute units
    telemetry     live readings: load, VRAM in use, power, clocks
    sysfs         card discovery from <sysfs>/class/drm and the PCI tree
    openclprobe   OpenCL device list, card join and probe kernel (pyopencl, lazily)
    health        health rounds over sysfs, /dev and OpenCL
    inventory     device ids (and sharing replicas) with their health
    allocation    Allocate and GetPreferredAllocation answers
    plugin        the DevicePlugin gRPC server on its unix socket
    registration  Register with the kubelet, kubelet-restart detection
    labeller      node labels and the merge patch that applies them
    metrics       per-GPU Prometheus gauges on /metrics
    agent         the asyncio program tying them together

``legacygpu node-agent`` (legacygpu.cli.nodeagent) is the command line.
"""

from __future__ import annotations

from legacygpu.worker.nodeagent.agent import DEFAULT_RESOURCE_NAME, AgentConfig, NodeAgent, run_agent
from legacygpu.worker.nodeagent.health import CHECKS, CardStatus, HealthChecker
from legacygpu.worker.nodeagent.inventory import DeviceInventory, PluginDevice
from legacygpu.worker.nodeagent.labeller import LABEL_KEYS, NodeLabeller, compute_labels, label_patch
from legacygpu.worker.nodeagent.sysfs import CardInfo, scan_cards

__all__ = [
    "CHECKS",
    "DEFAULT_RESOURCE_NAME",
    "LABEL_KEYS",
    "AgentConfig",
    "CardInfo",
    "CardStatus",
    "DeviceInventory",
    "HealthChecker",
    "NodeAgent",
    "NodeLabeller",
    "PluginDevice",
    "compute_labels",
    "label_patch",
    "run_agent",
    "scan_cards",
]
