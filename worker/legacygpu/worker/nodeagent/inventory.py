"""The devices the plugin advertises: card health turned into kubelet device ids.

Design: the kubelet schedules opaque device ids. Ours are the card's PCI
address (``0000:01:00.0``), stable across agent restarts and reboots while the
card keeps its slot. With sharing on (``replicas > 1``) each card is advertised
``replicas`` times as ``<pci address>::<n>``; every replica shares the card's
health, and nothing isolates one replica's memory or faults from another's
(see docs/node-agent.md).

:class:`DeviceInventory` is owned by the event loop: the health loop calls
:meth:`DeviceInventory.update` after each round, and every ``ListAndWatch``
stream waits on :attr:`DeviceInventory.changed`, an :class:`asyncio.Event`
that is set and replaced whenever the set of ids or any device's health
changes (a change of reason text alone does not re-send the list).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from legacygpu.worker.nodeagent.health import CardStatus

__all__ = ["DeviceInventory", "PluginDevice"]

logger = logging.getLogger(__name__)

REPLICA_SEPARATOR = "::"


@dataclass(frozen=True)
class PluginDevice:
    """One advertised device id."""

    id: str
    pci_address: str
    replica: int
    healthy: bool
    reason: str
    render_node: str
    numa_node: int | None
    pci_path: tuple[str, ...]


class DeviceInventory:
    """Device ids, their health, and a change signal for ``ListAndWatch``."""

    def __init__(self, replicas: int = 1) -> None:
        if replicas < 1:
            raise ValueError(f"replicas per GPU must be at least 1, got {replicas}")
        self.replicas = replicas
        self._statuses: dict[str, CardStatus] = {}
        self._devices: dict[str, PluginDevice] = {}
        self.changed = asyncio.Event()

    def _ids(self, address: str) -> list[tuple[str, int]]:
        if self.replicas == 1:
            return [(address, 0)]
        return [(f"{address}{REPLICA_SEPARATOR}{n}", n) for n in range(self.replicas)]

    def update(self, statuses: Mapping[str, CardStatus]) -> bool:
        """Take a health round's result; returns True (and signals) if the kubelet's view changed."""
        devices: dict[str, PluginDevice] = {}
        for address in sorted(statuses):
            status = statuses[address]
            for device_id, replica in self._ids(address):
                devices[device_id] = PluginDevice(
                    id=device_id,
                    pci_address=address,
                    replica=replica,
                    healthy=status.healthy,
                    reason=status.reason,
                    render_node=status.card.render_node,
                    numa_node=status.card.numa_node,
                    pci_path=status.card.pci_path,
                )
        for address, status in statuses.items():
            before = self._statuses.get(address)
            if before is None or before.healthy != status.healthy:
                level = logging.INFO if status.healthy else logging.WARNING
                logger.log(level, "card %s is %s: %s", address,
                           "Healthy" if status.healthy else "Unhealthy", status.reason)
        visible = {d.id: d.healthy for d in devices.values()}
        changed = visible != {d.id: d.healthy for d in self._devices.values()}
        self._statuses = dict(statuses)
        self._devices = devices
        if changed:
            self.wake()
        return changed

    def wake(self) -> None:
        """Wake every waiter on :attr:`changed` (used on change and on shutdown)."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def devices(self) -> list[PluginDevice]:
        return list(self._devices.values())

    def get(self, device_id: str) -> PluginDevice | None:
        return self._devices.get(device_id)
