"""The OpenCL side of discovery and health: list devices, join them to cards, run a probe kernel.

Design: the node agent must not trust the OpenCL driver to tell it which GPUs
exist (a card whose driver is broken must still be advertised, Unhealthy), so
sysfs is the inventory (:mod:`.sysfs`) and OpenCL is joined onto it. The join
uses the PCI address the driver reports (``cl_khr_pci_bus_info``, or AMD's
``cl_amd_device_attribute_query`` topology). Drivers that report none (Mesa
Clover, PoCL) are paired with the remaining cards in order: cards sorted by
PCI address against devices in enumeration order, which is how those drivers
enumerate render nodes. The health probe opens a context on the device,
builds a one-line kernel, runs it on 256 floats and checks every result.

Seam: everything the agent needs from OpenCL goes through the small
:class:`OpenCLProbe` protocol. :class:`PyOpenCLProbe` implements it directly
on pyopencl (imported lazily, so an agent run with ``--health-checks sysfs``
never loads an OpenCL driver). It shares the OpenCL core's
:func:`~legacygpu.worker.opencl.device.pci_address`, which the worker's device
choice also uses to match ``LEGACYGPU_VISIBLE_DEVICES``, but walks the platforms
itself rather than through :func:`~legacygpu.worker.opencl.device.discover`: it
filters by device type, keeps each platform's error as a health reason (the core
only logs it), and needs the pyopencl handle for its probe kernel.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from legacygpu.worker.nodeagent.errors import NodeAgentError
from legacygpu.worker.nodeagent.sysfs import CardInfo

__all__ = [
    "DEVICE_TYPES",
    "OpenCLCheckError",
    "OpenCLDevice",
    "OpenCLProbe",
    "PyOpenCLProbe",
    "join_cards",
    "opencl_version",
]

logger = logging.getLogger(__name__)

DEVICE_TYPES = ("gpu", "cpu", "all")

_PROBE_SOURCE = """
__kernel void legacygpu_probe(__global const float *x, __global float *y) {
    size_t i = get_global_id(0);
    y[i] = 2.0f * x[i] + 1.0f;
}
"""
_PROBE_SIZE = 256
_VERSION = re.compile(r"OpenCL\s+(\d+\.\d+)")


class OpenCLCheckError(NodeAgentError):
    """The probe kernel could not run; the message is the reason shown as the card's health."""


@dataclass(frozen=True)
class OpenCLDevice:
    """One OpenCL device as the agent needs it."""

    key: str  # "<platform index>:<device index>"
    platform: str
    name: str
    vendor_id: int
    version: str
    compute_units: int
    global_mem_bytes: int
    pci_address: str | None
    handle: Any = field(default=None, compare=False, repr=False)

    @property
    def opencl_version(self) -> str | None:
        return opencl_version(self.version)


def opencl_version(version: str) -> str | None:
    """``"OpenCL 2.0 AMD-APP (3423.0)"`` -> ``"2.0"``; None when it does not parse."""
    match = _VERSION.search(version)
    return match.group(1) if match else None


class OpenCLProbe(Protocol):
    """What the health checks and the labeller need from an OpenCL stack."""

    def list_devices(self) -> tuple[list[OpenCLDevice], list[str]]:
        """The devices found, and one line per platform that failed to enumerate."""
        ...

    def check(self, device: OpenCLDevice) -> None:
        """Open a context, run the probe kernel; raise :class:`OpenCLCheckError` with the reason."""
        ...


class _Prepared:
    """A context, queue and built kernel kept between checks of one device."""

    def __init__(self, cl: Any, device: Any) -> None:
        self.context = cl.Context([device])
        self.queue = cl.CommandQueue(self.context)
        program = cl.Program(self.context, _PROBE_SOURCE).build()
        self.kernel = cl.Kernel(program, "legacygpu_probe")


class PyOpenCLProbe:
    """:class:`OpenCLProbe` on pyopencl. ``device_types``: any of ``gpu``, ``cpu``, ``all``.

    The agent uses ``gpu``; ``cpu`` lets a test or a GPU-less node run the real
    probe on PoCL's CPU device.
    """

    def __init__(self, device_types: Iterable[str] = ("gpu",)) -> None:
        self.device_types = tuple(device_types)
        unknown = set(self.device_types) - set(DEVICE_TYPES)
        if unknown:
            raise ValueError(f"unknown OpenCL device type(s) {sorted(unknown)}; choose from {DEVICE_TYPES}")
        self._prepared: dict[str, _Prepared] = {}
        self._lock = threading.Lock()

    def _type_mask(self, cl: Any) -> int:
        names = {"gpu": cl.device_type.GPU, "cpu": cl.device_type.CPU, "all": cl.device_type.ALL}
        mask = 0
        for name in self.device_types:
            mask |= names[name]
        return mask

    def list_devices(self) -> tuple[list[OpenCLDevice], list[str]]:
        try:
            import pyopencl as cl
        except ImportError as exc:
            return [], [f"pyopencl is not importable: {exc}"]
        # Here, not at the top: the OpenCL core's package loads its GEMM and tuner (numpy and all),
        # which an agent running sysfs health checks only never needs.
        from legacygpu.worker.opencl.device import pci_address

        try:
            platforms = cl.get_platforms()
        except cl.Error as exc:
            return [], [f"no OpenCL platform: {exc}"]
        devices: list[OpenCLDevice] = []
        errors: list[str] = []
        mask = self._type_mask(cl)
        for p_index, platform in enumerate(platforms):
            try:
                found = platform.get_devices(device_type=mask)
            except cl.Error as exc:
                if "DEVICE_NOT_FOUND" not in str(exc):
                    errors.append(f"OpenCL platform {platform.name!r}: {exc}")
                continue
            for d_index, device in enumerate(found):
                try:
                    devices.append(OpenCLDevice(
                        key=f"{p_index}:{d_index}",
                        platform=platform.name.strip(),
                        name=device.name.strip(),
                        vendor_id=int(device.vendor_id),
                        version=device.version.strip(),
                        compute_units=int(device.max_compute_units),
                        global_mem_bytes=int(device.global_mem_size),
                        pci_address=pci_address(device),
                        handle=device,
                    ))
                except cl.Error as exc:
                    errors.append(f"OpenCL device {p_index}:{d_index} on {platform.name!r}: {exc}")
        return devices, errors

    def check(self, device: OpenCLDevice) -> None:
        import numpy as np
        import pyopencl as cl

        with self._lock:
            prepared = self._prepared.pop(device.key, None)
        try:
            if prepared is None:
                prepared = _Prepared(cl, device.handle)
            x = np.arange(_PROBE_SIZE, dtype=np.float32)
            y = np.zeros_like(x)
            flags = cl.mem_flags
            x_buf = cl.Buffer(prepared.context, flags.READ_ONLY | flags.COPY_HOST_PTR, hostbuf=x)
            y_buf = cl.Buffer(prepared.context, flags.WRITE_ONLY, y.nbytes)
            prepared.kernel(prepared.queue, (_PROBE_SIZE,), None, x_buf, y_buf)
            cl.enqueue_copy(prepared.queue, y, y_buf)
            prepared.queue.finish()
        except cl.Error as exc:  # a context that failed once is rebuilt next time
            raise OpenCLCheckError(f"OpenCL probe kernel failed on {device.name!r}: {exc}") from exc
        if not np.array_equal(y, 2.0 * x + 1.0):
            wrong = int(np.count_nonzero(y != 2.0 * x + 1.0))
            raise OpenCLCheckError(f"OpenCL probe kernel on {device.name!r} returned {wrong} wrong values")
        with self._lock:
            self._prepared[device.key] = prepared


def join_cards(cards: Sequence[CardInfo], devices: Sequence[OpenCLDevice]) -> dict[str, OpenCLDevice]:
    """Map PCI address -> OpenCL device: by reported PCI address, then the rest in order."""
    joined: dict[str, OpenCLDevice] = {}
    by_address = {d.pci_address: d for d in devices if d.pci_address}
    for card in cards:
        if card.pci_address in by_address:
            joined[card.pci_address] = by_address[card.pci_address]
    unplaced = [d for d in devices if not d.pci_address]
    remaining = [c for c in sorted(cards, key=lambda c: c.pci_address) if c.pci_address not in joined]
    for card, device in zip(remaining, unplaced, strict=False):
        joined[card.pci_address] = device
    return joined
