"""Live readings of one amdgpu card: load, VRAM in use, power and clocks.

Design: amdgpu publishes these beside the attributes :mod:`.sysfs` reads for
discovery, in the PCI device directory (``gpu_busy_percent``,
``mem_info_vram_used``) and in its hwmon sensor (``power1_average`` in
microwatts, ``freq1_input`` shader clock and ``freq2_input`` memory clock in
hertz; see the kernel's Documentation/gpu/amdgpu/thermal.rst). They are read
in the same guarded health round as the discovery attributes, so a hung
sysfs read never blocks a Prometheus scrape: the exporter only formats the
last round's values.

Unlike the discovery attributes these are optional: older kernels and some
boards lack a sensor, and a missing or malformed reading is ``None`` (no
sample exported), never a health problem. Values are converted to base units
here (a ratio, bytes, watts, hertz).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["GpuTelemetry", "read_telemetry"]


@dataclass(frozen=True)
class GpuTelemetry:
    """One round's readings; ``None`` where the card has no such sensor."""

    busy_ratio: float | None = None
    vram_used_bytes: int | None = None
    power_watts: float | None = None
    shader_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _hwmon(pci_dir: Path) -> Path | None:
    try:
        sensors = sorted(p for p in (pci_dir / "hwmon").iterdir() if p.name.startswith("hwmon"))
    except OSError:
        return None
    return sensors[0] if sensors else None


def read_telemetry(pci_dir: Path) -> GpuTelemetry:
    """Read the card's live sensors under ``pci_dir``; never raises."""
    busy = _number(pci_dir / "gpu_busy_percent")
    vram_used = _number(pci_dir / "mem_info_vram_used")
    hwmon = _hwmon(pci_dir)
    power = sclk = mclk = None
    if hwmon is not None:
        power = _number(hwmon / "power1_average")
        sclk = _number(hwmon / "freq1_input")
        mclk = _number(hwmon / "freq2_input")
    return GpuTelemetry(
        busy_ratio=None if busy is None else min(max(busy, 0), 100) / 100.0,
        vram_used_bytes=vram_used,
        power_watts=None if power is None else power / 1e6,
        shader_clock_hertz=None if sclk is None else float(sclk),
        memory_clock_hertz=None if mclk is None else float(mclk),
    )
