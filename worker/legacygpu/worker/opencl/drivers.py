"""OpenCL driver stacks: which one a device runs on, and which one to prefer.

Design
------
An RX 580 can be driven by several OpenCL stacks, and the same card may show
up on more than one platform at once (rusticl and Clover both ship in Debian
12's ``mesa-opencl-icd``). They differ in what works, so the core needs to
know which one it is talking to:

========  =====================================  ===============================
family    platform / device as the driver says   notes
========  =====================================  ===============================
pocl      ``Portable Computing Language``        the host CPU; the CI device
rusticl   ``rusticl``; ``radeonsi`` or           Mesa >= 22.3, needs
          ``llvmpipe`` in the device name        ``RUSTICL_ENABLE=radeonsi``
clover    ``Clover``, ``OpenCL 1.1 Mesa ...``    Mesa's old frontend, OpenCL 1.1
amd       ``AMD Accelerated Parallel             AMD's legacy (Orca/amdgpu-pro)
          Processing``, device ``Ellesmere``     driver, OpenCL 2.0 on Polaris
rocm      same platform, device ``gfx803``       ROCm dropped gfx803 (ROCm 4+)
other     anything else
========  =====================================  ===============================

:func:`driver_family` classifies a device from its platform name and
version and its device name (pure strings, unit-tested without the cards).
:func:`preference` ranks the stacks for a legacy AMD GPU: AMD's legacy
driver where it is installed (its compiler targets GCN directly and it is the
stack these cards were validated on), then rusticl (the maintained Mesa
frontend, what Debian 12 and current Ubuntu give an RX 580 owner), then
Clover (OpenCL 1.1 only, dropped from Mesa 25.2), then ROCm (no longer
supports gfx803). For CPU devices PoCL comes before llvmpipe: llvmpipe is a
software rasteriser, useful here as a stand-in for radeonsi (same rusticl
frontend, compiler path and runtime), not as a device to serve from.

:func:`cl_version` parses ``CL_DEVICE_VERSION`` ("OpenCL 1.1 Mesa ...") so
host code can keep to the OpenCL 1.1 API where the device reports 1.1.
"""

from __future__ import annotations

import re

__all__ = ["DRIVER_FAMILIES", "cl_version", "driver_family", "preference"]

DRIVER_FAMILIES = ("pocl", "rusticl", "clover", "amd", "rocm", "other")

# Lower is preferred. GPUs and CPUs are ranked separately (see the module docstring).
_GPU_ORDER = {"amd": 0, "rusticl": 1, "clover": 2, "rocm": 3, "other": 4, "pocl": 5}
_CPU_ORDER = {"pocl": 0, "amd": 1, "other": 2, "rusticl": 3, "clover": 4, "rocm": 5}


def driver_family(platform: str, platform_version: str = "", device_name: str = "") -> str:
    """The driver stack of a device: one of :data:`DRIVER_FAMILIES`."""
    p = platform.strip().lower()
    if "portable computing language" in p or p == "pocl":
        return "pocl"
    if p == "rusticl" or "rusticl" in p:
        return "rusticl"
    if p == "clover" or ("mesa" in platform_version.lower() and "1.1" in platform_version):
        return "clover"
    if "amd accelerated parallel processing" in p or p.startswith("amd"):
        return "rocm" if re.search(r"\bgfx\d", device_name, re.I) else "amd"
    return "other"


def preference(family: str, device_type: str) -> int:
    """Rank of a driver family for a device of ``device_type`` (lower is preferred)."""
    order = _GPU_ORDER if device_type == "gpu" else _CPU_ORDER
    return order.get(family, len(order))


def cl_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` from a ``CL_DEVICE_VERSION`` string; (1, 0) when it cannot be read."""
    match = re.search(r"OpenCL\s+(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (1, 0)
