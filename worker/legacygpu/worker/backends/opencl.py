"""The OpenCL backend: the project's ONNX executor on one OpenCL device.

Opening the backend opens the device (``device_index`` as listed by
``legacygpu devices``; by default the first legacy AMD GPU, else any GPU,
else any device, e.g. PoCL on the CPU) and builds nothing else: kernel
programs are compiled when the first plan needs them. ``load`` reads and
optimises the model; plans (one per input-shape signature) are built on the
first ``run`` with those shapes, or eagerly with ``warmup=True``.

Ops the executor cannot run go to onnxruntime inside the same model (see
:mod:`legacygpu.worker.opencl.planner`), so any model onnxruntime can load
runs here too; ``legacygpu model check`` reports how much of it ran on
OpenCL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from legacygpu.worker.backends.runtime import BackendInfo

__all__ = ["OpenCLBackend"]

log = logging.getLogger(__name__)


class OpenCLBackend:
    """Loads ONNX models onto one OpenCL device."""

    name = "opencl"
    concurrent_runs = 1
    """The device's command queue, its plans and its buffers serve one run at a time."""

    def __init__(
        self,
        device_index: int | None = None,
        *,
        kernel_overrides: Mapping[str, str] | None = None,
        disabled_ops: Iterable[str] = (),
        warmup: bool = False,
    ) -> None:
        from legacygpu.worker.opencl.device import open_device
        from legacygpu.worker.opencl.executor import OpenCLRuntime

        self.runtime = OpenCLRuntime(open_device(device_index), kernel_overrides)
        self.disabled_ops = frozenset(disabled_ops)
        self.warmup = warmup

    def info(self) -> BackendInfo:
        info = self.runtime.dctx.info
        return BackendInfo(
            backend=self.name,
            device=info.name,
            device_type=info.device_type,
            vram_mib=int(info.global_mem_bytes // 2**20),
            gpu_family=info.legacy_family,
            extra={
                "platform": info.platform,
                "driver": info.driver_version,
                "opencl": info.opencl_version,
                "device_index": str(info.index),
            },
        )

    def load(self, path: Path):  # type: ignore[no-untyped-def]  # -> OpenCLModel (a LoadedModel)
        from legacygpu.worker.opencl.executor import OpenCLModel

        model = OpenCLModel(Path(path), self.runtime, disabled_ops=self.disabled_ops)
        if self.warmup:
            model.plan(model.default_shapes())
        log.info("loaded %s on OpenCL device %s", Path(path).name, self.runtime.dctx.info.name)
        return model
