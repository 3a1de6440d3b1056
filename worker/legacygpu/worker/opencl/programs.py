"""Building and caching the executor's OpenCL programs (everything but GEMM).

Each op family has one source file in ``kernels/`` (``elementwise.cl``,
``shape.cl``, ``conv.cl``, ...), built once per device context with
:data:`BUILD_OPTIONS` (``-cl-std=CL1.1 -cl-mad-enable``: every kernel is
OpenCL C 1.1, so Mesa's Clover, which stops at 1.1, builds the same source as
rusticl and PoCL) and cached here together with its kernel objects.
``kernels/common.cl`` (the activation switch ``apply_act`` and the pixel
index split shared by several families) is prepended to every family's
source, an override's included.

A driver may fail to build a source (old compilers reject constructs newer
ones accept). :meth:`Programs.get` then raises
:class:`~legacygpu.worker.opencl.device.KernelBuildError` carrying the build
log, and remembers the failure so the planner can route every op of that
family to onnxruntime without retrying the build. That path is testable:
``overrides`` (or the ``LEGACYGPU_KERNEL_OVERRIDE_DIR`` directory, holding
``<family>.cl`` files) replaces a family's source, e.g. with one that does
not compile.

Launches without an explicit work-group shape use :data:`DEFAULT_LOCAL`
and round the global size up (every kernel checks its bounds).

Kernel objects are shared by every plan on the context; setting arguments
and enqueueing happen under one lock (:meth:`Programs.launch`) so two models
run from two threads never interleave ``set_args`` calls.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .device import DeviceContext, KernelBuildError

__all__ = ["BUILD_OPTIONS", "KERNEL_DIR", "OVERRIDE_ENV", "Programs", "f32", "i32"]

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).with_name("kernels")
OVERRIDE_ENV = "LEGACYGPU_KERNEL_OVERRIDE_DIR"

# Options every program of the core is built with (GEMM's add its -D parameters).
BUILD_OPTIONS: tuple[str, ...] = ("-cl-std=CL1.1", "-cl-mad-enable")


# Work-group shapes used when a kernel does not ask for one. Fixed shapes (global sizes are
# rounded up; every kernel bounds-checks) keep drivers that specialise per work-group size
# (PoCL compiles one variant per size) from compiling a kernel once per layer.
DEFAULT_LOCAL: dict[int, tuple[int, ...]] = {1: (64,), 2: (8, 8), 3: (4, 4, 4)}


def i32(value: int) -> np.int32:
    return np.int32(value)


def f32(value: float) -> np.float32:
    return np.float32(value)


@functools.cache
def _common_source() -> str:
    return (KERNEL_DIR / "common.cl").read_text()


def _env_overrides() -> dict[str, str]:
    folder = os.environ.get(OVERRIDE_ENV, "").strip()
    if not folder:
        return {}
    return {p.stem: p.read_text() for p in Path(folder).glob("*.cl")}


class Programs:
    """The executor's kernel families on one device, built lazily."""

    def __init__(self, dctx: DeviceContext, overrides: Mapping[str, str] | None = None) -> None:
        self.dctx = dctx
        self.overrides = {**_env_overrides(), **dict(overrides or {})}
        self._programs: dict[str, Any] = {}
        self._failures: dict[str, KernelBuildError] = {}
        self._kernels: dict[tuple[str, str], Any] = {}
        self._build_lock = threading.Lock()
        self.launch_lock = threading.RLock()

    def source(self, family: str) -> str:
        """``family``'s full source: the shared header, then its own file (or override)."""
        own = self.overrides[family] if family in self.overrides else (KERNEL_DIR / f"{family}.cl").read_text()
        return _common_source() + "\n" + own

    def _build(self, name: str, make_source: Callable[[], str], family: str | None = None) -> Any:
        """Program ``name`` built from ``make_source()`` once; a failure is remembered and raised again.

        ``family``: a generated program fails with its base family's remembered failure.
        """
        import pyopencl as cl

        with self._build_lock:
            if name in self._programs:
                return self._programs[name]
            known = self._failures.get(name) or (self._failures.get(family) if family else None)
            if known is not None:
                raise known
            try:
                program = cl.Program(self.dctx.ctx, make_source()).build(options=list(BUILD_OPTIONS))
            except (cl.Error, OSError) as exc:
                err = KernelBuildError(f"OpenCL kernels '{name}' failed to build on {self.dctx.info.name}: {exc}")
                log.warning("%s", err)
                self._failures[name] = err
                raise err from exc
            self._programs[name] = program
            return program

    def get(self, family: str) -> Any:
        """The built program of ``family``; raises KernelBuildError (remembered)."""
        return self._build(family, lambda: self.source(family))

    def custom(self, family: str, key: str, extra_source: str) -> Any:
        """A program made of ``family``'s source plus generated code (cached by ``key``).

        Generated kernels reuse a family's helper functions, so a family that does
        not build (or is overridden with a broken source) fails its generated
        kernels too.
        """
        return self._build(f"{family}+{key}", lambda: self.source(family) + "\n" + extra_source, family)

    def custom_kernel(self, family: str, key: str, extra_source: str, name: str) -> Any:
        """Kernel ``name`` of :meth:`custom`'s program (one shared object per program and name)."""
        cache_key = (f"{family}+{key}", name)
        kern = self._kernels.get(cache_key)
        if kern is None:
            kern = getattr(self.custom(family, key, extra_source), name)
            self._kernels[cache_key] = kern
        return kern

    def failed(self, family: str) -> KernelBuildError | None:
        return self._failures.get(family)

    def kernel(self, family: str, name: str) -> Any:
        key = (family, name)
        kern = self._kernels.get(key)
        if kern is None:
            kern = getattr(self.get(family), name)
            self._kernels[key] = kern
        return kern

    def launch(
        self,
        kern: Any,
        global_size: Sequence[int],
        args: Sequence[Any],
        local_size: Sequence[int] | None = None,
    ) -> None:
        """Set ``args`` on ``kern`` and enqueue it on the context's queue."""
        import pyopencl as cl

        if min(global_size) <= 0:
            return
        if local_size is None:
            local_size = DEFAULT_LOCAL[len(global_size)]
        gsize = tuple(-(-int(g) // int(lsz)) * int(lsz) for g, lsz in zip(global_size, local_size, strict=True))
        with self.launch_lock:
            kern.set_args(*args)
            cl.enqueue_nd_range_kernel(self.dctx.queue, kern, gsize, tuple(local_size))
