"""Steps that move values: host <-> device copies and layout conversions.

``upload`` and ``download`` copy between numpy arrays and device buffers
(blocking, so a host array can be reused as soon as the step returns).
``convert`` changes a device value's format between ``plain`` and ``cl``
(channels-last) with the strided-copy kernel; when the channel axis or the
spatial extent is 1 the two layouts are the same bytes and the conversion is
a free alias. A download always returns the plain (ONNX) layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .plan import Binding, Runner, Step, Unsupported, Val, physical_shape
from .programs import i32

if TYPE_CHECKING:
    from .plancontext import PlanContext

__all__ = ["convert", "download", "strided_copy_step", "upload"]


def upload(pc: PlanContext, name: str) -> str:
    val = pc.val(name)
    dev = pc.define(f"{name}@dev", val.shape, "plain")

    def bind(b: Binding) -> Runner:
        import pyopencl as cl

        buf, queue = b.buf(dev), b.queue

        def run(host: dict[str, np.ndarray]) -> None:
            data = np.ascontiguousarray(host[name], dtype=np.float32)
            if data.size:
                cl.enqueue_copy(queue, buf, data, is_blocking=True)

        return run

    pc.emit(Step("upload", f"upload {name}", [name], [dev], bind))
    return dev


def download(pc: PlanContext, name: str) -> str:
    src = pc.device(name, ("plain",))
    val = pc.val(name)
    out = f"{name}@host"
    pc.add_value(Val(out, val.shape, np.dtype(np.float32), "host", origin=val.origin))

    def bind(b: Binding) -> Runner:
        import pyopencl as cl

        buf, queue, shape = b.buf(src), b.queue, val.shape

        def run(host: dict[str, np.ndarray]) -> None:
            data = np.empty(shape, np.float32)
            if data.size:
                cl.enqueue_copy(queue, data, buf, is_blocking=True)
            host[out] = data

        return run

    pc.emit(Step("download", f"download {name}", [src], [out], bind))
    return out


def _layout_strides(shape: tuple[int, ...], src_fmt: str) -> tuple[list[int], list[int]]:
    """(output physical dims, strides into the input) for converting away from ``src_fmt``."""
    n, c, *spatial = shape
    sp = int(np.prod(spatial, dtype=np.int64))
    if src_fmt == "plain":  # plain (N, C, S...) -> cl (N, S..., C)
        out_dims = [n, *spatial, c]
        sp_strides = [int(np.prod(spatial[i + 1 :], dtype=np.int64)) for i in range(len(spatial))]
        return out_dims, [c * sp, *sp_strides, sp]
    # cl (N, S..., C) -> plain (N, C, S...)
    out_dims = [n, c, *spatial]
    sp_strides = [int(np.prod(spatial[i + 1 :], dtype=np.int64)) * c for i in range(len(spatial))]
    return out_dims, [sp * c, 1, *sp_strides]


def strided_copy_step(
    pc: PlanContext, src: str, dst: str, out_dims: list[int], strides: list[int], in_offset: int,
    label: str, kind: str = "opencl", nodes: list[str] | None = None,
) -> Step:
    """Emit ``dst[i] = src[in_offset + sum(coord_d(i) * strides[d])]`` over ``out_dims``."""
    kern = pc.kernel("shape", "copy_strided")
    meta = pc.table([*out_dims, *strides])
    rank, total = len(out_dims), int(np.prod(out_dims, dtype=np.int64))

    def bind(b: Binding) -> Runner:
        args = [b.buf(src), i32(in_offset), b.buf(dst), i32(0), i32(total), i32(rank), b.buf(meta)]

        def run(_host: dict[str, np.ndarray]) -> None:
            b.programs.launch(kern, (total,), args)

        return run

    return pc.emit(Step(kind, label, [src, meta], [dst], bind, nodes=list(nodes or [])))


def convert(pc: PlanContext, name: str, fmt: str) -> str:
    val = pc.val(name)
    if fmt == val.fmt:
        return name
    if len(val.shape) not in (3, 4) and (fmt == "cl" or val.fmt == "cl"):
        raise Unsupported(f"channels-last needs a rank-3/4 tensor, {name!r} has shape {val.shape}")
    base = name.split("@")[0]
    out = pc.define(f"{base}@{fmt}", val.shape, fmt)
    spatial = int(np.prod(val.shape[2:], dtype=np.int64))
    if val.shape[1] == 1 or spatial == 1:  # same bytes in both layouts
        pc.plan.values[out].alias_of = name
        pc.emit(Step("alias", f"{val.fmt}->{fmt} {base}", [name], [out]))
        return out
    out_dims, strides = _layout_strides(val.shape, val.fmt)
    assert physical_shape(val.shape, fmt) == tuple(out_dims)
    strided_copy_step(pc, name, out, out_dims, strides, 0, f"{val.fmt}->{fmt} {base}", kind="convert")
    return out
