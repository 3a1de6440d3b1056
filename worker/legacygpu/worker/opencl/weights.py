"""Device copies of constants, shared by every plan of a model.

Weights (depthwise filters, biases, constant operands of element-wise ops)
are registered while plans are built and uploaded on first use, after which
the host copy is dropped; a model run at batch 1 and then at batch 8 uploads
them once. Allocation failures become a
:class:`~legacygpu.core.errors.ModelError` that says how much was asked for.

GEMM weights (Conv, ConvTranspose, MatMul and Gemm by a constant) are stored
*packed*: in the layout :meth:`~.gemm.Gemm.pack_b` makes for the kernel
parameters the plan chose. A plan registers ``(weight, parameters)`` with a
loader (a function returning the host matrix, usually a view or reorder of
the graph's own constant, so no host copy is kept here) and the first run of
the plan packs it: upload, one ``pack_b``, the upload dropped unless the
kernel reads B in place. Every later run, and every other plan (batch size)
that chose the same parameters, uses that packed copy. The store holds
packed copies weakly: the bound plans that use them hold them, so a copy
goes when the last plan using it is dropped (least recently used, a failed
run, or the model unloaded) and a plan that needs it again packs it again.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError

__all__ = ["GemmWeight", "WeightStore", "allocate"]


def allocate(ctx: Any, nbytes: int, what: str) -> Any:
    """A READ_WRITE buffer of ``nbytes``; OpenCL allocation errors become ModelError."""
    import pyopencl as cl

    try:
        return cl.Buffer(ctx, cl.mem_flags.READ_WRITE, max(int(nbytes), 4))
    except (cl.MemoryError, cl.Error) as exc:
        raise ModelError(f"cannot allocate {nbytes / 2**20:.1f} MiB on the device for {what}: {exc}") from exc


@dataclass(frozen=True)
class GemmWeight:
    """A constant GEMM operand ``op(B)`` (K x N) and the kernel parameters it is packed for."""

    load: Callable[[], np.ndarray]  # the host matrix: (K, N), or (N, K) when ``trans``
    k: int
    n: int
    trans: bool
    params: Any  # gemm.GemmParams
    gemm: Any  # gemm.Gemm


class WeightStore:
    """Host arrays by name, uploaded to the device once; GEMM weights packed once per parameter set."""

    def __init__(self, dctx: Any) -> None:
        self.dctx = dctx
        self._host: dict[str, np.ndarray] = {}
        self._sizes: dict[str, int] = {}
        self._device: dict[str, Any] = {}
        self._gemm: dict[str, GemmWeight] = {}
        self._packed: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self.packs = 0
        """How many times a GEMM weight was packed (diagnostics and tests)."""

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

    def add_gemm(self, name: str, spec: GemmWeight) -> None:
        """Register a GEMM weight under ``name`` (one name per weight and parameter set)."""
        from .gemm import packed_elems

        with self._lock:
            if name not in self._gemm:
                self._gemm[name] = spec
                self._sizes[name] = 4 * (packed_elems(spec.k, spec.n, spec.params, spec.trans) or spec.k * spec.n)

    def packed(self, name: str, lock: Any) -> Any:
        """The :class:`~.gemm.PackedB` of a GEMM weight, packed now unless a live plan already holds it.

        ``lock`` serialises kernel launches (the executor's launch lock). Keep
        the result: the store only holds it weakly.
        """
        import pyopencl as cl
        import pyopencl.array as cla

        with self._lock:
            found = self._packed.get(name)
            if found is not None:
                return found
            spec = self._gemm[name]
            host = np.ascontiguousarray(spec.load(), dtype=np.float32)
            expect = (spec.n, spec.k) if spec.trans else (spec.k, spec.n)
            if host.shape != expect:
                raise ModelError(f"GEMM weight {name} has shape {host.shape}, expected {expect}")
            ctx, queue = self.dctx.ctx, self.dctx.queue

            def alloc(nbytes: int) -> Any:
                return allocate(ctx, nbytes, f"weight {name}")

            try:
                src = cla.to_device(queue, host, allocator=alloc)
                with lock:
                    packed = spec.gemm.pack_b(src, params=spec.params, trans_b=spec.trans, allocator=alloc)
                queue.finish()  # the upload can go now (unless B is used in place)
            except cl.Error as exc:
                raise ModelError(f"cannot upload and pack weight {name}: {exc}") from exc
            self._packed[name] = packed
            self.packs += 1
            return packed

    def packed_names(self) -> list[str]:
        """Names of the GEMM weights packed on the device now."""
        with self._lock:
            return sorted(self._packed.keys())

    def release(self) -> None:
        """Free the device copies; the store cannot serve those weights afterwards."""
        with self._lock:
            self._device.clear()
            self._packed.clear()
            self._gemm.clear()
