"""What a container gets for its device ids, and which ids the plugin would pick.

Design: ``Allocate`` is pure bookkeeping here. For each container the response
lists the render node of every allocated card (host ``<dev root>/dri/renderD*``
mounted at ``/dev/dri/renderD*``, permissions ``rw``), ``/dev/kfd`` when the host
has it (the amdgpu compute interface; OpenCL on ROCm needs it, Mesa does not),
and three environment variables the worker reads:

``LEGACYGPU_VISIBLE_DEVICES``
    PCI addresses of the allocated cards, comma-separated, each once.
``LEGACYGPU_RENDER_NODES``
    the matching ``/dev/dri/renderD*`` paths inside the container.
``LEGACYGPU_DEVICE_IDS``
    the device ids exactly as the kubelet allocated them (replicas included).

An unknown or Unhealthy id fails the whole request with an error naming every
offending id (:class:`~.errors.UnknownDeviceError`,
:class:`~.errors.UnhealthyDeviceError`); the plugin server maps them to gRPC
status codes.

``GetPreferredAllocation`` keeps a pod's cards together: it starts from the
ids the kubelet requires, anchors on their NUMA node (or, with none required,
on the NUMA node that can hold the whole request in the fewest spare cards),
then prefers cards on the same node, under the same PCI root, on distinct
physical cards before a second replica of one, and on the least-used cards.
Cards without NUMA information (``numa_node`` = -1, the usual single-socket
case) all count as one node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from legacygpu.worker.nodeagent.errors import UnhealthyDeviceError, UnknownDeviceError
from legacygpu.worker.nodeagent.inventory import DeviceInventory, PluginDevice
from legacygpu.worker.nodeagent.v1beta1 import api_pb2

__all__ = ["ENV_DEVICE_IDS", "ENV_RENDER_NODES", "ENV_VISIBLE_DEVICES", "allocate", "preferred_allocation"]

ENV_VISIBLE_DEVICES = "LEGACYGPU_VISIBLE_DEVICES"
ENV_RENDER_NODES = "LEGACYGPU_RENDER_NODES"
ENV_DEVICE_IDS = "LEGACYGPU_DEVICE_IDS"


def _container_response(
    devices: Sequence[PluginDevice], dev_root: Path
) -> api_pb2.ContainerAllocateResponse:
    response = api_pb2.ContainerAllocateResponse()
    cards: dict[str, PluginDevice] = {}
    for device in devices:
        cards.setdefault(device.pci_address, device)
    for card in cards.values():
        response.devices.append(api_pb2.DeviceSpec(
            container_path=f"/dev/dri/{card.render_node}",
            host_path=str(dev_root / "dri" / card.render_node),
            permissions="rw",
        ))
    kfd = dev_root / "kfd"
    if cards and kfd.exists():
        response.devices.append(api_pb2.DeviceSpec(container_path="/dev/kfd", host_path=str(kfd),
                                                   permissions="rw"))
    response.envs[ENV_VISIBLE_DEVICES] = ",".join(cards)
    response.envs[ENV_RENDER_NODES] = ",".join(f"/dev/dri/{c.render_node}" for c in cards.values())
    response.envs[ENV_DEVICE_IDS] = ",".join(d.id for d in devices)
    return response


def allocate(request: api_pb2.AllocateRequest, inventory: DeviceInventory,
             dev_root: Path) -> api_pb2.AllocateResponse:
    """Build the kubelet's answer, or raise naming every unknown or unhealthy id."""
    unknown: list[str] = []
    unhealthy: dict[str, str] = {}
    containers: list[list[PluginDevice]] = []
    for container in request.container_requests:
        devices: list[PluginDevice] = []
        for device_id in container.devices_ids:
            device = inventory.get(device_id)
            if device is None:
                unknown.append(device_id)
            elif not device.healthy:
                unhealthy[device_id] = device.reason
            else:
                devices.append(device)
        containers.append(devices)
    if unknown:
        raise UnknownDeviceError(unknown)
    if unhealthy:
        raise UnhealthyDeviceError(unhealthy)
    return api_pb2.AllocateResponse(
        container_responses=[_container_response(devices, dev_root) for devices in containers]
    )


def _numa(device: PluginDevice | None) -> int:
    return -1 if device is None or device.numa_node is None else device.numa_node


def _root(device: PluginDevice | None) -> str:
    return device.pci_path[0] if device is not None and device.pci_path else ""


def preferred_allocation(
    available: Sequence[str], must_include: Sequence[str], size: int, inventory: DeviceInventory
) -> list[str]:
    """Pick ``size`` ids from ``available`` (always keeping ``must_include``), cards kept together."""
    chosen = list(dict.fromkeys(must_include))
    if size <= len(chosen):
        return chosen
    known = {i: inventory.get(i) for i in available}
    candidates = [i for i in dict.fromkeys(available) if i not in chosen]
    need = size - len(chosen)
    if chosen:
        anchor_numa = Counter(_numa(inventory.get(i)) for i in chosen).most_common(1)[0][0]
        anchor_root = Counter(_root(inventory.get(i)) for i in chosen).most_common(1)[0][0]
    else:
        by_numa = Counter(_numa(known[i]) for i in candidates)
        fitting = [n for n, count in by_numa.items() if count >= need]
        anchor_numa = (min(fitting, key=lambda n: (by_numa[n], n)) if fitting
                       else max(by_numa, key=lambda n: (by_numa[n], -n)) if by_numa else -1)
        roots = Counter(_root(known[i]) for i in candidates if _numa(known[i]) == anchor_numa)
        anchor_root = roots.most_common(1)[0][0] if roots else ""
    free_per_card = Counter(d.pci_address for d in known.values() if d is not None)
    used: Counter[str] = Counter()
    for device_id in chosen:
        device = inventory.get(device_id)
        if device is not None:
            used[device.pci_address] += 1
    while need > 0 and candidates:
        def key(device_id: str) -> tuple[int, int, int, int, int, str]:
            device = known[device_id]
            if device is None:  # ids we do not know go last
                return (1, 1, 1, 0, 0, device_id)
            return (
                int(_numa(device) != anchor_numa),
                int(_root(device) != anchor_root),
                used[device.pci_address],
                -free_per_card[device.pci_address],
                device.replica,
                device.pci_address,
            )

        best = min(candidates, key=key)
        candidates.remove(best)
        chosen.append(best)
        device = known[best]
        if device is not None:
            used[device.pci_address] += 1
            free_per_card[device.pci_address] -= 1
        need -= 1
    return chosen
