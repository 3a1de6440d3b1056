"""Discovery of AMD GPUs from the kernel's DRM and PCI sysfs tree.

Design: the kernel lists every DRM minor under ``<sysfs>/class/drm``; a render
node ``renderD<minor>`` is a symlink into the PCI device that owns it
(``devices/pci0000:00/0000:00:01.0/0000:01:00.0/drm/renderD128``), and its
``device`` link points at that PCI device directory. There the PCI core
publishes ``vendor``, ``device``, ``revision`` and ``numa_node``, and amdgpu adds
``mem_info_vram_total`` and a ``hwmon/hwmon<N>/temp1_input`` sensor
(millidegrees Celsius); the live readings beside them (load, VRAM in use,
power, clocks) come from :mod:`.telemetry`. :func:`scan_cards` walks exactly that, so it runs
unchanged against the real ``/sys`` or against a fixture tree laid out the
same way (``tests/nodeagent/sysfs_tree.py``).

A card is identified by its PCI address (``0000:01:00.0``): stable across
reboots and agent restarts as long as the card stays in its slot, unlike DRM
minor numbers, which follow probe order. Reading never raises: every file that
is missing, unreadable or malformed becomes a line in :attr:`CardInfo.problems`,
and the health checks turn a non-empty list into ``Unhealthy`` with those
lines as the reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from legacygpu.worker.nodeagent.pciids import AMD_VENDOR_ID, CardModel, identify
from legacygpu.worker.nodeagent.telemetry import GpuTelemetry, read_telemetry

__all__ = ["CardInfo", "scan_cards"]

logger = logging.getLogger(__name__)

_RENDER = re.compile(r"^renderD(\d+)$")
_CARD = re.compile(r"^card(\d+)$")
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# Drivers that never drive an AMD GPU: a card bound to one of them is not ours.
_FOREIGN_DRIVERS = frozenset({"i915", "xe", "nouveau", "nvidia", "virtio-pci", "virtio_gpu", "ast", "mgag200"})


@dataclass(frozen=True)
class CardInfo:
    """One GPU as sysfs shows it right now."""

    pci_address: str
    render_node: str
    render_minor: int
    card_node: str | None = None
    vendor_id: int | None = None
    device_id: int | None = None
    revision: int | None = None
    vram_bytes: int | None = None
    temperature_c: float | None = None
    numa_node: int | None = None
    driver: str | None = None
    pci_path: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())
    telemetry: GpuTelemetry = field(default_factory=GpuTelemetry)

    @property
    def model(self) -> CardModel:
        return identify(self.vendor_id, self.device_id, self.revision)

    @property
    def vram_mib(self) -> int | None:
        return None if self.vram_bytes is None else self.vram_bytes // (1024 * 1024)


class _Reader:
    """Reads attribute files under one PCI device directory, collecting problems."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []

    def text(self, relative: str, *, required: bool = True) -> str | None:
        path = self.directory / relative
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            if required:
                self.problems.append(f"sysfs file {path} is missing")
        except OSError as exc:
            self.problems.append(f"sysfs file {path} is unreadable: {exc.strerror or exc}")
        return None

    def integer(self, relative: str, *, base: int = 10, required: bool = True) -> int | None:
        raw = self.text(relative, required=required)
        if raw is None:
            return None
        try:
            return int(raw, base)
        except ValueError:
            self.problems.append(f"sysfs file {self.directory / relative} holds {raw!r}, not a number")
            return None


def _resolve_pci_dir(entry: Path) -> Path | None:
    """The PCI device directory behind a ``class/drm`` entry, or None if it has none.

    The kernel's ``device`` link is the documented way; the entry's own
    location (``<pci dir>/drm/renderD128``) is the fallback.
    """
    for candidate in (entry / "device", entry / ".." / ".."):
        try:
            resolved = candidate.resolve(strict=True)
        except OSError:
            continue
        if _PCI_ADDRESS.match(resolved.name):
            return resolved
    return None


def _pci_path(sysfs_root: Path, pci_dir: Path) -> tuple[str, ...]:
    try:
        return pci_dir.relative_to((sysfs_root / "devices").resolve()).parts
    except ValueError:
        return (pci_dir.name,)


def _card_node(pci_dir: Path) -> str | None:
    try:
        names = sorted(p.name for p in (pci_dir / "drm").iterdir() if _CARD.match(p.name))
    except OSError:
        return None
    return names[0] if names else None


def _driver(pci_dir: Path) -> str | None:
    try:
        return (pci_dir / "driver").resolve(strict=True).name
    except OSError:
        return None


def _temperature(reader: _Reader) -> float | None:
    hwmon = reader.directory / "hwmon"
    try:
        sensors = sorted(p for p in hwmon.iterdir() if p.name.startswith("hwmon"))
    except FileNotFoundError:
        reader.problems.append(f"sysfs directory {hwmon} is missing (no temperature sensor)")
        return None
    except OSError as exc:
        reader.problems.append(f"sysfs directory {hwmon} is unreadable: {exc.strerror or exc}")
        return None
    if not sensors:
        reader.problems.append(f"sysfs directory {hwmon} holds no hwmon sensor")
        return None
    millidegrees = reader.integer(f"hwmon/{sensors[0].name}/temp1_input")
    return None if millidegrees is None else millidegrees / 1000.0


def read_card(sysfs_root: Path, render_node: str, pci_dir: Path) -> CardInfo:
    """Read one card's attributes; problems are collected, never raised."""
    match = _RENDER.match(render_node)
    minor = int(match.group(1)) if match else -1
    reader = _Reader(pci_dir)
    vendor_id = reader.integer("vendor", base=16)
    device_id = reader.integer("device", base=16)
    revision = reader.integer("revision", base=16, required=False)
    vram = reader.integer("mem_info_vram_total")
    numa = reader.integer("numa_node", required=False)
    temperature = _temperature(reader)
    return CardInfo(
        pci_address=pci_dir.name,
        render_node=render_node,
        render_minor=minor,
        card_node=_card_node(pci_dir),
        vendor_id=vendor_id,
        device_id=device_id,
        revision=revision,
        vram_bytes=vram,
        temperature_c=temperature,
        numa_node=numa if numa is not None and numa >= 0 else None,
        driver=_driver(pci_dir),
        pci_path=_pci_path(sysfs_root, pci_dir),
        problems=tuple(reader.problems),
        telemetry=read_telemetry(pci_dir),
    )


def _is_ours(card: CardInfo) -> bool:
    if card.vendor_id is not None:
        return card.vendor_id == AMD_VENDOR_ID
    return card.driver not in _FOREIGN_DRIVERS


def scan_cards(sysfs_root: Path | str) -> list[CardInfo]:
    """Every AMD GPU with a render node under ``<sysfs_root>/class/drm``, by PCI address.

    A node without DRM (no GPU, or no driver loaded) yields an empty list. A
    render node whose vendor file cannot be read is kept (with the problem
    recorded) unless its driver says it belongs to another vendor.
    """
    root = Path(sysfs_root)
    drm = root / "class" / "drm"
    try:
        entries = sorted(drm.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("cannot list %s: %s", drm, exc)
        return []
    cards: dict[str, CardInfo] = {}
    for entry in entries:
        if not _RENDER.match(entry.name):
            continue
        pci_dir = _resolve_pci_dir(entry)
        if pci_dir is None:
            logger.debug("%s is not backed by a PCI device; skipped", entry)
            continue
        card = read_card(root, entry.name, pci_dir)
        if _is_ours(card) and card.pci_address not in cards:
            cards[card.pci_address] = card
    return sorted(cards.values(), key=lambda c: c.pci_address)
