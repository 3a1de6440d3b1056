"""Health of each card: present in sysfs, files readable, device node there, OpenCL alive.

Design: one *round* (:meth:`HealthChecker.check_round`) scans sysfs, checks
each card's ``/dev/dri/renderD*`` node, and, with the ``opencl`` check on,
runs the probe kernel of :mod:`.openclprobe` on the OpenCL device joined to
the card. The result is one :class:`CardStatus` per card ever seen since the
agent started: a card that drops out of sysfs (hot-unplugged, fallen off the
bus) stays listed, Unhealthy, so the kubelet takes it out of service instead
of forgetting it, and it comes back Healthy when it reappears.

Checks:

``sysfs``
    the card's attribute files are readable and parse (``vendor``, ``device``,
    ``mem_info_vram_total``, ``hwmon/*/temp1_input``), and its render node
    exists under the dev root and is readable and writable.
``opencl``
    an OpenCL device is joined to the card and the probe kernel gives the right
    answer within ``opencl_timeout`` seconds.

A card that vanished is Unhealthy whichever checks are on. Reads of a hung
GPU's sysfs files or driver can block for ever, so :meth:`check_round_async`
runs the round in a daemon thread and, when it overruns, reports every card
Unhealthy ("health check blocked") and starts no new round until the blocked
one returns. Nothing here raises for a bad card.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from legacygpu.worker.nodeagent.openclprobe import (
    OpenCLCheckError,
    OpenCLDevice,
    OpenCLProbe,
    join_cards,
)
from legacygpu.worker.nodeagent.sysfs import CardInfo, scan_cards

__all__ = ["CHECKS", "CardStatus", "HealthChecker"]

logger = logging.getLogger(__name__)

CHECKS = ("sysfs", "opencl")
T = TypeVar("T")


@dataclass(frozen=True)
class CardStatus:
    """One card's health after a round; ``card`` is the last sysfs view of it."""

    card: CardInfo
    present: bool
    healthy: bool
    reasons: tuple[str, ...] = ()
    opencl: OpenCLDevice | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "ok"


class _Blocked(Exception):
    pass


def _run_in_daemon(fn: Callable[[], T], timeout: float, pending: dict[str, threading.Thread], key: str) -> T:
    """Run ``fn`` in a daemon thread; raise :class:`_Blocked` if it overruns or an earlier run still does."""
    previous = pending.get(key)
    if previous is not None and previous.is_alive():
        raise _Blocked(f"an earlier call has been blocked for over {timeout:g}s and has not returned")
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"legacygpu-health-{key}", daemon=True)
    pending[key] = thread
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _Blocked(f"no answer within {timeout:g}s")
    pending.pop(key, None)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class HealthChecker:
    """Runs health rounds over one node's sysfs and dev trees."""

    def __init__(
        self,
        sysfs_root: Path | str,
        dev_root: Path | str,
        *,
        checks: Iterable[str] = CHECKS,
        probe: OpenCLProbe | None = None,
        opencl_timeout: float = 30.0,
        round_timeout: float = 60.0,
    ) -> None:
        self.sysfs_root = Path(sysfs_root)
        self.dev_root = Path(dev_root)
        self.checks = frozenset(checks)
        unknown = self.checks - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown health check(s) {sorted(unknown)}; choose from {CHECKS}")
        if "opencl" in self.checks and probe is None:
            raise ValueError("the opencl check needs an OpenCL probe")
        self.probe = probe
        self.opencl_timeout = opencl_timeout
        self.round_timeout = round_timeout
        self._known: dict[str, CardInfo] = {}
        self._joined: dict[str, OpenCLDevice] = {}
        self._pending: dict[str, threading.Thread] = {}
        self.opencl_errors: list[str] = []
        self.last: dict[str, CardStatus] = {}

    # -- one round -----------------------------------------------------------------

    def check_round(self) -> dict[str, CardStatus]:
        """Scan and check every card once (blocking); returns PCI address -> status."""
        present = {card.pci_address: card for card in scan_cards(self.sysfs_root)}
        self._known.update(present)
        opencl = self._join_opencl() if "opencl" in self.checks else {}
        statuses: dict[str, CardStatus] = {}
        for address in sorted(self._known):
            card = self._known[address]
            if address not in present:
                reason = (f"card {address} ({card.render_node}) is no longer listed in "
                          f"{self.sysfs_root / 'class' / 'drm'}")
                statuses[address] = CardStatus(card, present=False, healthy=False, reasons=(reason,))
                continue
            reasons: list[str] = []
            if "sysfs" in self.checks:
                reasons.extend(card.problems)
                reasons.extend(self._device_node_problems(card))
            device = opencl.get(address)
            if "opencl" in self.checks:
                reasons.extend(self._opencl_problems(card, device))
            statuses[address] = CardStatus(
                card, present=True, healthy=not reasons, reasons=tuple(reasons), opencl=device
            )
        self.last = statuses
        return statuses

    async def check_round_async(self) -> dict[str, CardStatus]:
        """:meth:`check_round` off the event loop, bounded by ``round_timeout``."""
        try:
            return await asyncio.to_thread(
                _run_in_daemon, self.check_round, self.round_timeout, self._pending, "round"
            )
        except _Blocked as exc:
            reason = f"health check blocked (a sysfs read or driver call hangs): {exc}"
            logger.error("%s", reason)
            self.last = {
                address: CardStatus(card, present=True, healthy=False, reasons=(reason,))
                for address, card in self._known.items()
            }
            return self.last

    # -- the individual checks --------------------------------------------------------

    def _device_node_problems(self, card: CardInfo) -> list[str]:
        node = self.dev_root / "dri" / card.render_node
        if not os.path.exists(node):
            return [f"device node {node} is missing"]
        if not os.access(node, os.R_OK | os.W_OK):
            return [f"device node {node} is not readable and writable by the agent"]
        return []

    def _join_opencl(self) -> dict[str, OpenCLDevice]:
        assert self.probe is not None
        try:
            devices, errors = self.probe.list_devices()
        except Exception as exc:  # a broken ICD must not take the agent down
            devices, errors = [], [f"OpenCL enumeration failed: {exc}"]
        self.opencl_errors = errors
        keys = {d.key: d for d in devices}
        # Keep pairings made earlier while their device still exists: a card that
        # vanishes must not hand its OpenCL device to its neighbour.
        joined = {a: keys[d.key] for a, d in self._joined.items() if d.key in keys}
        taken = {d.key for d in joined.values()}
        free_cards = [c for a, c in self._known.items() if a not in joined]
        free_devices = [d for d in devices if d.key not in taken]
        joined.update(join_cards(free_cards, free_devices))
        self._joined = joined
        return joined

    def _opencl_problems(self, card: CardInfo, device: OpenCLDevice | None) -> list[str]:
        if device is None:
            detail = "; ".join(self.opencl_errors) if self.opencl_errors else "the driver lists no device for it"
            return [f"no OpenCL device for card {card.pci_address}: {detail}"]
        assert self.probe is not None
        probe = self.probe
        try:
            _run_in_daemon(lambda: probe.check(device), self.opencl_timeout, self._pending,
                           f"opencl-{card.pci_address}")
        except _Blocked as exc:
            return [f"OpenCL probe kernel on {device.name!r} blocked: {exc}"]
        except OpenCLCheckError as exc:
            return [str(exc)]
        except Exception as exc:
            return [f"OpenCL probe kernel on {device.name!r} failed: {type(exc).__name__}: {exc}"]
        return []
