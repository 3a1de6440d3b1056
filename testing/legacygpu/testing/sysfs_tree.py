"""Builders for fixture trees that mirror a real node's /sys, /dev and kubelet dir.

The layout is the one the Linux kernel exposes for an amdgpu card, not one of
our own: the PCI device directory sits under its root bus and root port
(``devices/pci0000:00/0000:00:01.0/0000:01:00.0``) and holds ``vendor``,
``device``, ``revision``, ``class``, ``numa_node``, ``mem_info_vram_total``,
``hwmon/hwmon<N>/{temp1_input,power1_average,freq1_input,freq2_input}``, the live
``gpu_busy_percent`` and ``mem_info_vram_used``, a ``driver`` link into ``bus/pci/drivers/amdgpu``
and a ``drm/`` directory with ``card<N>`` and ``renderD<M>``, each with a
``device`` link back to the PCI directory. ``class/drm/card<N>`` and
``class/drm/renderD<M>`` are relative symlinks into that directory, as in
``/sys``. Under ``dev/`` the builder makes ``dri/card<N>``, ``dri/renderD<M>``,
``dri/by-path/pci-<address>-render`` links and ``kfd``; they are plain files
here, where the real ones are character devices.

``unplug`` removes everything a hot-removed card leaves behind (its class
links, its PCI directory and its device nodes); ``plug`` puts it back;
``break_file`` makes one attribute missing or unreadable.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FakeCard", "NodeTree", "rx580"]

GIB = 1024**3


@dataclass
class FakeCard:
    """One amdgpu card as the kernel would show it."""

    pci_address: str
    card_index: int
    render_minor: int
    root_port: str | None = "0000:00:01.0"
    root_bus: str = "pci0000:00"
    vendor: int = 0x1002
    device: int = 0x67DF
    revision: int = 0xE7
    subsystem_vendor: int = 0x1DA2  # Sapphire
    subsystem_device: int = 0xE366
    vram_bytes: int = 8 * GIB
    numa_node: int = -1
    temperature_millideg: int = 41000
    busy_percent: int = 0
    vram_used_bytes: int = 15454208
    power_microwatts: int = 33000000
    shader_clock_hz: int | None = 300000000
    memory_clock_hz: int | None = 300000000
    hwmon_index: int = 0
    driver: str = "amdgpu"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def render_node(self) -> str:
        return f"renderD{self.render_minor}"

    @property
    def card_node(self) -> str:
        return f"card{self.card_index}"


def rx580(index: int, *, numa_node: int = -1, root_bus: str = "pci0000:00") -> FakeCard:
    """An 8 GiB RX 580 in PCI bus ``index + 1`` behind root port ``00:0<index+1>.0``."""
    bus = index + 1
    return FakeCard(
        pci_address=f"0000:{bus:02x}:00.0",
        root_port=f"0000:00:{bus:02x}.0",
        root_bus=root_bus,
        card_index=index,
        render_minor=128 + index,
        numa_node=numa_node,
        hwmon_index=index,
        temperature_millideg=40000 + 1000 * index,
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


class NodeTree:
    """A node's ``sys/``, ``dev/`` and kubelet device-plugin directory under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sysfs = root / "sys"
        self.dev = root / "dev"
        self.kubelet_dir = root / "var/lib/kubelet/device-plugins"
        self.cards: dict[str, FakeCard] = {}
        (self.sysfs / "class/drm").mkdir(parents=True, exist_ok=True)
        (self.sysfs / "class/hwmon").mkdir(parents=True, exist_ok=True)
        (self.dev / "dri").mkdir(parents=True, exist_ok=True)
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        _write(self.sysfs / "class/drm/version", "drm 1.1.0 20060810\n")

    def pci_dir(self, card: FakeCard) -> Path:
        parts = [self.sysfs / "devices" / card.root_bus]
        if card.root_port:
            parts.append(Path(card.root_port))
        return Path(*parts) / card.pci_address

    def plug(self, card: FakeCard, *, kfd: bool = True) -> FakeCard:
        """Create the card's PCI directory, DRM minors, hwmon sensor and device nodes."""
        self.cards[card.pci_address] = card
        pci = self.pci_dir(card)
        vendor_device = f"{card.vendor:04X}:{card.device:04X}"
        attributes = {
            "vendor": f"0x{card.vendor:04x}\n",
            "device": f"0x{card.device:04x}\n",
            "revision": f"0x{card.revision:02x}\n",
            "subsystem_vendor": f"0x{card.subsystem_vendor:04x}\n",
            "subsystem_device": f"0x{card.subsystem_device:04x}\n",
            "class": "0x030000\n",
            "numa_node": f"{card.numa_node}\n",
            "local_cpulist": "0-1\n",
            "enable": "1\n",
            "mem_info_vram_total": f"{card.vram_bytes}\n",
            "mem_info_vram_used": f"{card.vram_used_bytes}\n",
            "mem_info_vis_vram_total": f"{256 * 1024 * 1024}\n",
            "gpu_busy_percent": f"{card.busy_percent}\n",
            "current_link_speed": "8.0 GT/s PCIe\n",
            "current_link_width": "16\n",
            "uevent": (
                f"DRIVER={card.driver}\nPCI_CLASS=30000\nPCI_ID={vendor_device}\n"
                f"PCI_SUBSYS_ID={card.subsystem_vendor:04X}:{card.subsystem_device:04X}\n"
                f"PCI_SLOT_NAME={card.pci_address}\n"
                f"MODALIAS=pci:v0000{card.vendor:04X}d0000{card.device:04X}"
                f"sv0000{card.subsystem_vendor:04X}sd0000{card.subsystem_device:04X}bc03sc00i00\n"
            ),
            **card.extra,
        }
        for name, text in attributes.items():
            _write(pci / name, text)
        driver = self.sysfs / "bus/pci/drivers" / card.driver
        driver.mkdir(parents=True, exist_ok=True)
        _link(pci / "driver", driver)
        _link(driver / card.pci_address, pci)
        for node, minor in ((card.card_node, card.card_index), (card.render_node, card.render_minor)):
            minor_dir = pci / "drm" / node
            _write(minor_dir / "dev", f"226:{minor}\n")
            _write(minor_dir / "uevent", f"MAJOR=226\nMINOR={minor}\nDEVNAME=dri/{node}\nDEVTYPE=drm_minor\n")
            _link(minor_dir / "device", pci)
            _link(minor_dir / "subsystem", self.sysfs / "class/drm")
            _link(self.sysfs / "class/drm" / node, minor_dir)
            _write(self.dev / "dri" / node, "")
        hwmon = pci / "hwmon" / f"hwmon{card.hwmon_index}"
        _write(hwmon / "name", f"{card.driver}\n")
        _write(hwmon / "temp1_input", f"{card.temperature_millideg}\n")
        _write(hwmon / "temp1_crit", "94000\n")
        _write(hwmon / "temp1_crit_hyst", "-273150\n")
        _write(hwmon / "power1_average", f"{card.power_microwatts}\n")
        for name, hertz in (("freq1", card.shader_clock_hz), ("freq2", card.memory_clock_hz)):
            if hertz is not None:
                _write(hwmon / f"{name}_input", f"{hertz}\n")
                _write(hwmon / f"{name}_label", "sclk\n" if name == "freq1" else "mclk\n")
        _link(hwmon / "device", pci)
        _link(self.sysfs / "class/hwmon" / hwmon.name, hwmon)
        _link(self.dev / "dri/by-path" / f"pci-{card.pci_address}-card", self.dev / "dri" / card.card_node)
        _link(self.dev / "dri/by-path" / f"pci-{card.pci_address}-render", self.dev / "dri" / card.render_node)
        if kfd:
            _write(self.dev / "kfd", "")
        return card

    def unplug(self, pci_address: str) -> FakeCard:
        """What a hot-removed (or fallen-off-the-bus) card leaves: nothing of it."""
        card = self.cards[pci_address]
        for node in (card.card_node, card.render_node):
            (self.sysfs / "class/drm" / node).unlink(missing_ok=True)
            (self.dev / "dri" / node).unlink(missing_ok=True)
            (self.dev / "dri/by-path" / f"pci-{pci_address}-{'card' if node == card.card_node else 'render'}"
             ).unlink(missing_ok=True)
        (self.sysfs / "class/hwmon" / f"hwmon{card.hwmon_index}").unlink(missing_ok=True)
        (self.sysfs / "bus/pci/drivers" / card.driver / pci_address).unlink(missing_ok=True)
        shutil.rmtree(self.pci_dir(card))
        return card

    def sensor(self, pci_address: str, name: str) -> Path:
        """The card's hwmon file ``name`` (``temp1_input``, ``power1_average``...)."""
        card = self.cards[pci_address]
        return self.pci_dir(card) / "hwmon" / f"hwmon{card.hwmon_index}" / name

    def attribute(self, pci_address: str, relative: str) -> Path:
        return self.pci_dir(self.cards[pci_address]) / relative

    def break_file(self, pci_address: str, relative: str, how: str = "missing") -> Path:
        """Make ``<pci dir>/<relative>`` missing, or unreadable (EISDIR as root, EACCES otherwise)."""
        path = self.attribute(pci_address, relative)
        path.unlink()
        if how == "unreadable":
            if os.geteuid() == 0:  # root reads any mode: a directory in its place fails read() for root too
                path.mkdir()
            else:
                path.write_text("0\n")
                path.chmod(0)
        elif how != "missing":
            raise ValueError(how)
        return path

    def restore_file(self, pci_address: str, relative: str, text: str) -> None:
        path = self.attribute(pci_address, relative)
        if path.is_dir():
            path.rmdir()
        elif path.exists():
            path.chmod(0o644)
        path.write_text(text)
