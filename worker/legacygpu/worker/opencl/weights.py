"""Device copies of constants, shared by every plan of a model.

Weights (reordered convolution filters, GEMM matrices, biases, constant
operands of element-wise ops) are registered while plans are built and
uploaded on first use, after which the host copy is dropped; a model run at
batch 1 and then at batch 8 uploads them once. Allocation failures become a
:class:`~legacygpu.core.errors.ModelError` that says how much was asked for.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError

__all__ = ["WeightStore", "allocate"]


def allocate(ctx: Any, nbytes: int, what: str) -> Any:
    """A READ_WRITE buffer of ``nbytes``; OpenCL allocation errors become ModelError."""
    import pyopencl as cl

    try:
        return cl.Buffer(ctx, cl.mem_flags.READ_WRITE, max(int(nbytes), 4))
    except (cl.MemoryError, cl.Error) as exc:
        raise ModelError(f"cannot allocate {nbytes / 2**20:.1f} MiB on the device for {what}: {exc}") from exc


class WeightStore:
    """Host arrays by name, uploaded to the device once."""

    def __init__(self, dctx: Any) -> None:
        self.dctx = dctx
        self._host: dict[str, np.ndarray] = {}
        self._sizes: dict[str, int] = {}
        self._device: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, name: str, array: np.ndarray) -> None:
        with self._lock:
            if name not in self._sizes:
                self._host[name] = np.ascontiguousarray(array, dtype=np.float32)
                self._sizes[name] = self._host[name].nbytes

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def buffer(self, name: str) -> Any:
        import pyopencl as cl

        with self._lock:
            buf = self._device.get(name)
            if buf is None:
                host = self._host[name]
                buf = allocate(self.dctx.ctx, host.nbytes, f"weight {name}")
                if host.size:
                    try:
                        cl.enqueue_copy(self.dctx.queue, buf, host, is_blocking=True)
                    except cl.Error as exc:
                        raise ModelError(f"cannot upload weight {name}: {exc}") from exc
                self._device[name] = buf
                del self._host[name]  # the device copy is the only one kept (PoCL: the same RAM)
            return buf

    def release(self) -> None:
        """Free the device copies; the store cannot serve those weights afterwards."""
        with self._lock:
            self._device.clear()
