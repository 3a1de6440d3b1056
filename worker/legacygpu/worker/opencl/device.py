"""OpenCL device discovery and the context/queue holder every kernel uses.

Design
------
:func:`discover` walks every OpenCL platform pyopencl can see and returns one
frozen :class:`DeviceInfo` per device, in a stable order (platform order as
the ICD loader reports it, then device order inside the platform). The index
of a device in that list is the number users pass to ``--device`` and
:func:`open_device`.

Legacy AMD GPUs (GCN 3/4: Polaris, Fiji, Tonga; the RX 470-590 family that
ROCm dropped) are recognised by :func:`identify_legacy_family` from whatever
the driver tells us: the PCI id when it can be read (``cl_khr_pci_bus_info``
or ``cl_amd_device_attribute_query`` give the bus address, sysfs gives the
vendor:device id), the AMD board name, and the device name as each driver
spells it:

* AMD's legacy OpenCL (AMD APP / amdgpu-pro): name ``Ellesmere``, board name
  ``Radeon RX 580 Series``;
* ROCm's OpenCL: name ``gfx803``;
* Mesa Clover: ``AMD Radeon RX 580 Series (POLARIS10, DRM 3.42.0, ...)``;
* Mesa rusticl: ``AMD Radeon RX 580 Series (radeonsi, polaris10, LLVM ...)``.

The function is pure (strings in, family out) so it is unit-tested without
the hardware. PoCL exposes the host CPU as an OpenCL device; it is reported
with ``device_type == "cpu"`` and never as a legacy GPU.

Errors: :class:`OpenCLError` is the root of the OpenCL core's exceptions
(under the shared :class:`~legacygpu.core.errors.LegacyGPUError`)::

    OpenCLError
    ├── DeviceNotFoundError   no OpenCL platform/device, or a bad index
    └── KernelBuildError      a kernel failed to compile on this driver
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from legacygpu.core.errors import LegacyGPUError

from . import drivers

__all__ = [
    "DeviceContext",
    "DeviceInfo",
    "DeviceNotFoundError",
    "KernelBuildError",
    "OpenCLError",
    "discover",
    "identify_legacy_family",
    "open_device",
    "pci_address",
]

log = logging.getLogger(__name__)

AMD_VENDOR_ID = 0x1002

# PCI device ids (vendor 1002) -> family. Polaris 10/20/30 (Ellesmere),
# Polaris 11/21 (Baffin), Polaris 12 (Lexa), Fiji, Tonga.
_PCI_FAMILIES: dict[str, set[int]] = {
    "polaris": {
        *range(0x67C0, 0x6800),  # Polaris 10/11/20/21/30 (RX 470-590, RX 460/560, WX)
        0x6FDF,  # Polaris 20 XL (RX 580 2048SP)
        *range(0x6980, 0x69A0),  # Polaris 12 (RX 540/550, Lexa)
    },
    "fiji": {0x7300, 0x730F},
    "tonga": {0x6920, 0x6921, 0x6928, 0x6929, 0x692B, 0x692F, 0x6930, 0x6938, 0x6939},
}

_NAME_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("fiji", re.compile(r"\bfiji\b|\bR9 (?:fury|nano)\b|\bradeon pro duo\b", re.I)),
    ("tonga", re.compile(r"\btonga\b|\bantigua\b|\bR9 (?:285|380X?)\b", re.I)),
    (
        "polaris",
        re.compile(
            r"ellesmere|baffin|\blexa\b|polaris\s*-?\d*|gfx803"
            r"|\bRX\s*(?:4[6-9]0|5[4-9]0)(?!\d)|\bWX\s*(?:[4-7]100)\b",
            re.I,
        ),
    ),
]


class OpenCLError(LegacyGPUError):
    """Root of the OpenCL core's errors."""


class DeviceNotFoundError(OpenCLError):
    """No OpenCL device matches the request (or OpenCL is not installed)."""


class KernelBuildError(OpenCLError):
    """An OpenCL program failed to build; the message carries the build log."""


@dataclass(frozen=True)
class DeviceInfo:
    """What we know about one OpenCL device; plain data, JSON-friendly."""

    index: int
    platform: str
    name: str
    vendor: str
    device_type: str  # 'gpu' | 'cpu' | 'accelerator' | 'custom' | 'unknown'
    compute_units: int
    global_mem_bytes: int
    max_alloc_bytes: int
    local_mem_bytes: int
    max_clock_mhz: int
    opencl_version: str
    driver_version: str
    fp16: bool
    legacy_family: str | None
    pci_id: str | None
    is_legacy_amd: bool
    platform_index: int = 0
    device_index: int = 0
    platform_version: str = ""
    vendor_id: int = 0
    board_name: str | None = None
    max_work_group_size: int = 0
    local_mem_is_global: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "driver_family": self.driver_family}

    @property
    def driver_family(self) -> str:
        """The driver stack (``pocl``, ``rusticl``, ``clover``, ``amd``, ``rocm``, ``other``); see :mod:`.drivers`."""
        return drivers.driver_family(self.platform, self.platform_version, self.name)

    @property
    def cl_version(self) -> tuple[int, int]:
        """The OpenCL version the device reports, as ``(major, minor)``."""
        return drivers.cl_version(self.opencl_version)

    @property
    def cache_key(self) -> str:
        """The identity tuned kernels are keyed by: platform, device, driver."""
        return f"{self.platform}|{self.name}|{self.driver_version}"


def identify_legacy_family(
    name: str,
    *,
    vendor: str = "",
    vendor_id: int | None = None,
    board_name: str | None = None,
    pci_id: str | None = None,
    device_type: str = "gpu",
) -> str | None:
    """Return ``'polaris'``, ``'fiji'`` or ``'tonga'`` for a legacy AMD GPU, else None.

    A PCI id (``"1002:67df"``) wins when present; otherwise the board name and
    the device name are matched against the names drivers use. CPU devices
    (PoCL) are never legacy GPUs, whatever their name says.
    """
    if device_type != "gpu":
        return None
    if pci_id:
        with contextlib.suppress(ValueError):
            ven_s, dev_s = pci_id.lower().split(":", 1)
            ven, dev = int(ven_s, 16), int(dev_s, 16)
            if ven == AMD_VENDOR_ID:
                for family, ids in _PCI_FAMILIES.items():
                    if dev in ids:
                        return family
    amd = (vendor_id == AMD_VENDOR_ID) or bool(re.search(r"\b(amd|advanced micro devices|ati)\b", vendor, re.I))
    text = " ".join(s for s in (board_name or "", name) if s)
    # Mesa puts the chip in parentheses; AMD puts the codename in the name.
    if not amd and not re.search(r"radeon|amd|gfx8\d\d|ellesmere|polaris|baffin", text, re.I):
        return None
    for family, pattern in _NAME_PATTERNS:
        if pattern.search(text):
            return family
    return None


def _device_type(cl: Any, value: int) -> str:
    t = cl.device_type
    if value & t.GPU:
        return "gpu"
    if value & t.CPU:
        return "cpu"
    if value & t.ACCELERATOR:
        return "accelerator"
    if value & getattr(t, "CUSTOM", 0):
        return "custom"
    return "unknown"


def pci_address(dev: Any) -> str | None:
    """The device's PCI address as sysfs names it (``0000:03:00.0``), from the KHR or AMD extension.

    ``None`` when the driver offers neither extension (PoCL, most ICDs on CPUs).
    """
    exts = dev.extensions
    if "cl_khr_pci_bus_info" in exts:
        with contextlib.suppress(Exception):
            info = dev.pci_bus_info_khr
            return f"{info.pci_domain:04x}:{info.pci_bus:02x}:{info.pci_device:02x}.{info.pci_function:x}"
    if "cl_amd_device_attribute_query" in exts:
        with contextlib.suppress(Exception):
            topo = dev.topology_amd
            return f"0000:{topo.bus:02x}:{topo.device:02x}.{topo.function:x}"
    return None


def _pci_id_from_sysfs(address: str | None, sysfs: Path = Path("/sys/bus/pci/devices")) -> str | None:
    if address is None:
        return None
    node = sysfs / address
    try:
        ven = int((node / "vendor").read_text().strip(), 16)
        dev = int((node / "device").read_text().strip(), 16)
    except (OSError, ValueError):
        return None
    return f"{ven:04x}:{dev:04x}"


def _info_for(cl: Any, index: int, p_index: int, d_index: int, platform: Any, dev: Any) -> DeviceInfo:
    dtype = _device_type(cl, dev.type)
    exts = dev.extensions
    board = None
    if "cl_amd_device_attribute_query" in exts:
        with contextlib.suppress(Exception):
            board = dev.board_name_amd.strip() or None
    pci_id = _pci_id_from_sysfs(pci_address(dev))
    family = identify_legacy_family(
        dev.name, vendor=dev.vendor, vendor_id=dev.vendor_id, board_name=board, pci_id=pci_id, device_type=dtype
    )
    return DeviceInfo(
        index=index,
        platform=platform.name.strip(),
        name=dev.name.strip(),
        vendor=dev.vendor.strip(),
        device_type=dtype,
        compute_units=int(dev.max_compute_units),
        global_mem_bytes=int(dev.global_mem_size),
        max_alloc_bytes=int(dev.max_mem_alloc_size),
        local_mem_bytes=int(dev.local_mem_size),
        max_clock_mhz=int(dev.max_clock_frequency),
        opencl_version=dev.version.strip(),
        driver_version=dev.driver_version.strip(),
        fp16="cl_khr_fp16" in exts,
        legacy_family=family,
        pci_id=pci_id,
        is_legacy_amd=family is not None,
        platform_index=p_index,
        device_index=d_index,
        platform_version=platform.version.strip(),
        vendor_id=int(dev.vendor_id),
        board_name=board,
        max_work_group_size=int(dev.max_work_group_size),
        local_mem_is_global=int(dev.local_mem_type) == int(cl.device_local_mem_type.GLOBAL),
    )


def _walk() -> list[tuple[DeviceInfo, Any]]:
    try:
        import pyopencl as cl
    except ImportError as exc:  # pragma: no cover - pyopencl is a worker dependency
        raise DeviceNotFoundError("pyopencl is not installed (pip install 'legacygpu[worker]')") from exc
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # the ICD loader found no platform at all
        log.debug("no OpenCL platform: %s", exc)
        return []
    found: list[tuple[DeviceInfo, Any]] = []
    for p_index, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error as exc:
            # normal for Mesa without a card: Clover, and rusticl without RUSTICL_ENABLE
            log.info("OpenCL platform %r lists no devices: %s", platform.name, exc)
            continue
        for d_index, dev in enumerate(devices):
            found.append((_info_for(cl, len(found), p_index, d_index, platform, dev), dev))
    return found


def discover() -> list[DeviceInfo]:
    """Every OpenCL device on every platform, in a stable order (empty if none)."""
    return [info for info, _ in _walk()]


@dataclass
class DeviceContext:
    """An OpenCL context and in-order queue bound to one device.

    ``ctx``/``queue``/``device`` are pyopencl objects; ``info`` is the
    :class:`DeviceInfo` of the device. Kernels and buffers built for one
    DeviceContext must not be used with another.
    """

    ctx: Any
    queue: Any
    device: Any
    info: DeviceInfo

    def finish(self) -> None:
        self.queue.finish()


def _rank(info: DeviceInfo, prefer: str) -> tuple[int, int, int, int]:
    # preferred type first, legacy AMD GPUs first among GPUs, then the preferred driver stack
    # (one card can appear on two platforms: rusticl and Clover), then the biggest device.
    return (
        0 if info.device_type == prefer else 1,
        0 if info.is_legacy_amd else 1,
        drivers.preference(info.driver_family, info.device_type),
        -info.compute_units,
    )


ENV_OPENCL_DEVICE = "LEGACYGPU_OPENCL_DEVICE"
ENV_VISIBLE_DEVICES = "LEGACYGPU_VISIBLE_DEVICES"  # set by the node agent's Allocate (PCI addresses)


def _env_index() -> int | None:
    """The device index ``LEGACYGPU_OPENCL_DEVICE`` names, or None when it is unset or empty."""
    raw = os.environ.get(ENV_OPENCL_DEVICE, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise DeviceNotFoundError(f"{ENV_OPENCL_DEVICE}={raw!r} is not an index") from exc


def _visible(found: list[tuple[DeviceInfo, Any]]) -> list[tuple[DeviceInfo, Any]] | None:
    """The devices whose PCI address ``LEGACYGPU_VISIBLE_DEVICES`` lists, in discovery order.

    None when the variable is unset, or when no discovered device reports a PCI
    address at all (PoCL, drivers without the PCI extensions, the e2e simulator):
    the caller then chooses as if the variable were unset, and a warning says so.
    When devices do report addresses and none is listed, the cards here belong to
    other pods: :class:`DeviceNotFoundError` rather than opening one of them.
    """
    raw = os.environ.get(ENV_VISIBLE_DEVICES, "").strip()
    if not raw:
        return None
    wanted = {a.strip().lower() for a in raw.split(",") if a.strip()}
    addresses = [(pci_address(dev) or "").lower() for _, dev in found]
    matched = [pair for pair, address in zip(found, addresses, strict=True) if address in wanted]
    if matched:
        return matched
    reported = sorted(a for a in addresses if a)
    if reported:
        raise DeviceNotFoundError(
            f"{ENV_VISIBLE_DEVICES}={raw} names none of the OpenCL devices here (they are at "
            f"{', '.join(reported)}); not opening a card that was allocated to another pod"
        )
    log.warning(
        "%s=%s, but no OpenCL device here reports a PCI address; choosing a device as if it were unset",
        ENV_VISIBLE_DEVICES,
        raw,
    )
    return None


def _choose(found: list[tuple[DeviceInfo, Any]], index: int | None, prefer: str) -> tuple[DeviceInfo, Any]:
    """Pick the device :func:`open_device` opens; see its docstring for the order of the rules."""
    if index is None:
        index = _env_index()
    visible = _visible(found)
    if index is not None:
        if not 0 <= index < len(found):
            raise DeviceNotFoundError(
                f"no OpenCL device with index {index}; there are {len(found)} (see `legacygpu devices`)"
            )
        if visible is not None and all(info.index != index for info, _ in visible):
            log.warning("OpenCL device %d is not among those %s names; opening it anyway", index, ENV_VISIBLE_DEVICES)
        return found[index]
    pool = visible if visible is not None else found
    chosen = min(pool, key=lambda pair: _rank(pair[0], prefer))
    others = [f"{i.index}: {i.name} ({i.driver_family})" for i, _ in pool if i.index != chosen[0].index]
    log.info(
        "chose OpenCL device %d: %s on %s (driver stack %s, %s)%s",
        chosen[0].index, chosen[0].name, chosen[0].platform, chosen[0].driver_family, chosen[0].opencl_version,
        f"; preferred over {', '.join(others)}" if others else "",
    )  # fmt: skip
    return chosen


def open_device(index: int | None = None, prefer: str = "gpu", *, profiling: bool = False) -> DeviceContext:
    """Open a context and queue on device ``index`` (see :func:`discover`).

    With ``index=None``: the index in ``LEGACYGPU_OPENCL_DEVICE`` if set (an
    index into :func:`discover`'s list, as ``legacygpu devices`` numbers it);
    else, when ``LEGACYGPU_VISIBLE_DEVICES`` lists PCI addresses (the node
    agent sets it to the cards a pod was given), the best-ranked device at
    one of those addresses; else the best-ranked device of type ``prefer``
    (legacy AMD GPUs first, then by driver stack as
    :func:`~legacygpu.worker.opencl.drivers.preference` orders them, so a card
    that both rusticl and Clover expose opens on rusticl), falling back to any
    device. The choice and what it was preferred over are logged (INFO). If
    ``LEGACYGPU_VISIBLE_DEVICES`` matches no device (a driver that reports no
    PCI address, such as PoCL), a warning is logged and it is ignored; if
    devices report addresses and none is listed, :class:`DeviceNotFoundError`.
    """
    import pyopencl as cl

    found = _walk()
    if not found:
        raise DeviceNotFoundError(
            "no OpenCL device found: install a driver (on a CPU-only host: apt install pocl-opencl-icd)"
        )
    info, dev = _choose(found, index, prefer)
    try:
        ctx = cl.Context([dev])
        if profiling:
            queue = cl.CommandQueue(ctx, dev, properties=cl.command_queue_properties.PROFILING_ENABLE)
        else:
            queue = cl.CommandQueue(ctx, dev)
    except cl.Error as exc:
        raise DeviceNotFoundError(f"cannot open OpenCL device {info.index} ({info.name}): {exc}") from exc
    return DeviceContext(ctx=ctx, queue=queue, device=dev, info=info)
