"""Inference backends behind one interface, chosen by name.

``create_backend(name)`` is the only way the worker gets a backend:

* ``onnxruntime``: onnxruntime's CPU execution provider.
* ``opencl``: the project's own ONNX executor on an OpenCL device
  (:mod:`legacygpu.worker.backends.opencl`), with onnxruntime running the
  ops it cannot.
* ``auto``: ``opencl`` when an OpenCL GPU is present, else ``onnxruntime``:
  on a CPU-only host onnxruntime beats PoCL running our kernels on the same
  cores.

How many runs a backend takes at once is its ``concurrent_runs``: two on
onnxruntime unless ``LEGACYGPU_CONCURRENT_RUNS`` (``legacygpu worker start
--concurrent-runs``) says otherwise, always one on the OpenCL device.

Backend modules are imported lazily so a host without OpenCL can still use
onnxruntime.
"""

from __future__ import annotations

import logging
import os

from legacygpu.core.config import CONCURRENT_RUNS_ENV
from legacygpu.core.errors import ValidationError
from legacygpu.worker.backends.runtime import BackendInfo, InferenceBackend, LoadedModel

__all__ = [
    "BACKENDS",
    "BackendInfo",
    "InferenceBackend",
    "LoadedModel",
    "create_backend",
    "gpu_present",
]

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "opencl", "auto")


def gpu_present(device_index: int | None = None) -> bool:
    """Whether OpenCL reports a GPU (the one at ``device_index`` when given).

    Built on :func:`~legacygpu.worker.opencl.device.discover`, so a platform
    that lists no devices (pyopencl raises for it) is skipped rather than
    hiding a GPU on another platform, and ``device_index`` means the same
    device as in ``legacygpu devices`` and ``open_device``.
    """
    try:
        from legacygpu.worker.opencl.device import discover

        devices = discover()
    except Exception as exc:  # no pyopencl, no ICD loader: simply no GPU
        log.debug("no OpenCL devices: %s", exc)
        return False
    if device_index is not None:
        if not 0 <= device_index < len(devices):
            return False
        devices = [devices[device_index]]
    return any(d.device_type == "gpu" for d in devices)


def create_backend(name: str, device_index: int | None = None) -> InferenceBackend:
    """Build the backend called ``name``; ``device_index`` picks the OpenCL device.

    Its ``concurrent_runs`` comes from :data:`CONCURRENT_RUNS_ENV` where that is set.
    """
    concurrent_runs = _concurrent_runs()
    if name == "auto":
        name = "opencl" if gpu_present(device_index) else "onnxruntime"
        log.info("backend auto: chose %s", name)
    if name == "onnxruntime":
        from legacygpu.worker.backends.onnxruntime import CONCURRENT_RUNS, OnnxRuntimeBackend

        return OnnxRuntimeBackend(concurrent_runs=concurrent_runs or CONCURRENT_RUNS)
    if name == "opencl":
        from legacygpu.worker.backends.opencl import OpenCLBackend

        if concurrent_runs not in (None, 1):
            log.warning("%s=%d: the OpenCL backend runs one at a time", CONCURRENT_RUNS_ENV, concurrent_runs)
        return OpenCLBackend(device_index)
    raise ValidationError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def _concurrent_runs() -> int | None:
    """:data:`CONCURRENT_RUNS_ENV` as a number, None when unset; a value that is not a positive integer is refused."""
    raw = os.environ.get(CONCURRENT_RUNS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValidationError(f"{CONCURRENT_RUNS_ENV} must be a positive integer, not {raw!r}")
    return int(raw)
