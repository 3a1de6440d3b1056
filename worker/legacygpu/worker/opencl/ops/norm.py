"""Normalisation and reductions: per-channel affine (batch norm), layer norm, Reduce*.

``BatchNormalization`` in inference mode is a per-channel affine map; the
graph passes turn it into ``ChannelAffine`` (and usually fold it into the
preceding convolution). What remains runs in the input's format:
channels-last puts the channel on the fastest axis, plain on axis 1.

``LayerNormalization`` normalises the trailing axes from ``axis`` with one
work-group per row and a two-pass (mean, then centred variance) reduction.

``Reduce*`` reduce a contiguous run of axes, seen as an (outer, len, inner)
view; on channels-last data the spatial axes are contiguous, so a
``ReduceMean`` over H and W (a global average pool written as a reduction)
needs no layout change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..graph import Node
from ..plan import Unsupported, physical_shape
from ..programs import f32, i32
from .registry import Buf, act_args, kernel_step, nelem, norm_axis, prefer_fmt, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__: list[str] = []

WG = 64
REDUCE_OPS = {"ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3, "ReduceProd": 4,
              "ReduceSumSquare": 5, "ReduceL2": 6, "ReduceL1": 7, "ReduceLogSumExp": 8}  # fmt: skip


def _affine(pc: PlanContext, node: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    if len(shape) < 2 or shape[1] != scale.size:
        raise Unsupported(f"channel affine of shape {shape} with {scale.size} channels")
    src = pc.device(x, prefer_fmt(pc, x))
    fmt = pc.val(src).fmt
    out = pc.define(node.outputs[0], shape, fmt)
    inner = 1 if fmt == "cl" else nelem(shape[2:])
    s = pc.weight(f"affine_s:{node.name}", scale)
    b = pc.weight(f"affine_b:{node.name}", shift)
    total = nelem(shape)
    kernel_step(pc, "elementwise", "channel_affine", (total,),
                [Buf(src), Buf(s), Buf(b), Buf(out), i32(total), i32(inner), i32(shape[1]),
                 *act_args(node.activation)], inputs=[src, s, b], outputs=[out])  # fmt: skip


@register("ChannelAffine")
def channel_affine(node: Node, pc: PlanContext) -> None:
    scale = np.asarray(pc.need_const(node.input(1), "affine scale"), np.float32).ravel()
    shift = np.asarray(pc.need_const(node.input(2), "affine shift"), np.float32).ravel()
    _affine(pc, node, scale, shift)


@register("BatchNormalization")
def batch_norm(node: Node, pc: PlanContext) -> None:
    if len([o for o in node.outputs if o]) > 1 or node.attr("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    gamma, beta, mean, var = (
        np.asarray(pc.need_const(node.input(i), "BatchNormalization statistics"), np.float64).ravel()
        for i in range(1, 5)
    )
    scale = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    _affine(pc, node, scale.astype(np.float32), (beta - mean * scale).astype(np.float32))


@register("LayerNormalization")
def layer_norm(node: Node, pc: PlanContext) -> None:
    if len([o for o in node.outputs if o]) > 1:
        raise Unsupported("LayerNormalization mean/inv-std outputs")
    x = node.input(0)
    shape = pc.shape(x)
    axis = norm_axis(node.attr("axis", -1), len(shape))
    cols = nelem(shape[axis:])
    scale = np.broadcast_to(np.asarray(pc.need_const(node.input(1), "LayerNorm scale"), np.float32),
                            shape[axis:]).reshape(-1)  # fmt: skip
    bias_c = pc.const(node.input(2)) if node.input(2) else None
    if node.input(2) and bias_c is None:
        raise Unsupported("LayerNorm bias is computed at run time")
    bias = np.broadcast_to(np.asarray(bias_c if bias_c is not None else 0.0, np.float32), shape[axis:]).reshape(-1)
    src = pc.device(x, ("plain",))
    out = pc.define(node.outputs[0], shape)
    s = pc.weight(f"ln_s:{node.name}", scale)
    b = pc.weight(f"ln_b:{node.name}", bias)
    rows = nelem(shape[:axis])
    kernel_step(pc, "norm", "layer_norm", (rows * WG,),
                [Buf(src), Buf(s), Buf(b), Buf(out), i32(cols), f32(float(node.attr("epsilon", 1e-5))), i32(1)],
                inputs=[src, s, b], outputs=[out], local_size=(WG,))  # fmt: skip


def _reduce_axes(node: Node, pc: PlanContext, rank: int) -> list[int]:
    axes = None
    if node.input(1):
        axes = [int(a) for a in np.asarray(pc.need_const(node.input(1), "reduction axes")).ravel()]
    elif node.attr("axes") is not None:
        axes = list(node.attr("axes"))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            raise Unsupported("Reduce with noop_with_empty_axes")
        return list(range(rank))
    return sorted({norm_axis(a, rank) for a in axes})


@register(*REDUCE_OPS)
def reduce(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    rank = len(shape)
    axes = _reduce_axes(node, pc, rank)
    keep = bool(node.attr("keepdims", 1))
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes)
    fmt = "plain"
    phys_axes = axes
    if rank in (3, 4) and prefer_fmt(pc, x)[0] == "cl" and 1 not in axes and 0 not in axes:
        fmt = "cl"
        phys_axes = [a - 1 for a in axes]  # spatial axes move one left in N,(H,)W,C
    if phys_axes != list(range(phys_axes[0], phys_axes[-1] + 1)):
        raise Unsupported(f"reduction over non-adjacent axes {axes}")
    src = pc.device(x, (fmt,))
    phys = physical_shape(shape, fmt)
    lo, hi = phys_axes[0], phys_axes[-1] + 1
    outer, length, inner = nelem(phys[:lo]), nelem(phys[lo:hi]), nelem(phys[hi:])
    out_fmt = fmt if keep else "plain"
    if fmt == "cl" and not keep:
        raise Unsupported("channels-last reduction without keepdims")
    out = pc.define(node.outputs[0], out_shape, out_fmt)
    kernel_step(pc, "norm", "reduce_axis", (inner, outer),
                [Buf(src), Buf(out), i32(outer), i32(length), i32(inner), i32(REDUCE_OPS[node.op])],
                inputs=[src], outputs=[out])  # fmt: skip
