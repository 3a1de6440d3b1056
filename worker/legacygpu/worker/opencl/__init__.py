"""The OpenCL core: devices, kernels, autotuner, executor.

Public names are re-exported here; each import line belongs to one module.
"""

from __future__ import annotations

from .device import DeviceContext, DeviceInfo, DeviceNotFoundError, KernelBuildError, OpenCLError, discover, open_device
from .gemm import Gemm, GemmParams, PackedB, shape_class
from .tuning import Autotuner, TuningCache

__all__ = [
    "Autotuner",
    "DeviceContext",
    "DeviceInfo",
    "DeviceNotFoundError",
    "Gemm",
    "GemmParams",
    "KernelBuildError",
    "OpenCLError",
    "PackedB",
    "TuningCache",
    "discover",
    "open_device",
    "shape_class",
]
