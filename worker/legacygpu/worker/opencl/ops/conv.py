"""Convolutions on channels-last activations: 1x1 as GEMM, depthwise direct, the rest im2col + GEMM.

With activations stored N,H,W,C the batch and spatial axes form the rows of
one matrix (M = N*OH*OW), so a convolution is a GEMM against the filter
laid out as (KH*KW*Cin, Cout), and the GEMM's fused bias + activation
epilogue finishes the layer:

* **1x1, stride 1, no padding, one group**: the input *is* the (M, Cin)
  matrix; no copy at all.
* **depthwise** (groups == input channels): a direct kernel, one work-item
  per output element, bias and activation fused.
* **everything else**: ``im2col`` writes the (rows, KH*KW*Cin/g) patch
  matrix for a block of rows into scratch space, then a GEMM per group
  (on CPU devices one work-item copies a kernel tap's channel run, on GPUs
  one work-item writes one element so neighbours stay coalesced).
  Row blocks bound the scratch space (a 3x3 layer on a 224x224 image would
  otherwise need a patch matrix of hundreds of MiB). With groups > 1 each
  group's result is block-copied into its channel columns.

``ConvTranspose`` (one group) is a GEMM of the input against the filter
laid out as (Cin, KH*KW*Cout) followed by a gather-form ``col2im`` that sums
the taps landing on each output pixel and applies bias and activation.
1-D convolutions run as 2-D ones with H = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..graph import Node
from ..plan import Unsupported
from ..programs import i32
from .matmul import ConstB, gemm_call
from .registry import Buf, act_args, kernel_step, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__ = ["IM2COL_BUDGET", "conv_geometry", "cpu_style"]

IM2COL_BUDGET = 32 * 2**20
"""Bytes of patch matrix built at once; larger convolutions are done in row blocks."""


def conv_geometry(
    node: Node, in_shape: tuple[int, ...], kernel: tuple[int, ...], transposed: bool = False
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(strides, dilations, pads_begin, pads_end, output spatial) of a Conv/pool node."""
    nsp = len(kernel)
    spatial = list(in_shape[2:])
    strides = list(node.attr("strides") or [1] * nsp)
    dil = list(node.attr("dilations") or [1] * nsp)
    pads = list(node.attr("pads") or [0] * (2 * nsp))
    auto = node.attr("auto_pad", "NOTSET")
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    if transposed:
        outp = list(node.attr("output_padding") or [0] * nsp)
        if node.attr("output_shape") is not None:
            raise Unsupported("ConvTranspose output_shape")
        if auto not in ("NOTSET", "VALID"):
            raise Unsupported(f"ConvTranspose auto_pad {auto}")
        geo = zip(strides, spatial, outp, eff, pads[:nsp], pads[nsp:], strict=True)
        out = [s * (i - 1) + op + e - pb - pe for s, i, op, e, pb, pe in geo]
        return strides, dil, pads[:nsp], pads[nsp:], out
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(spatial, strides, strict=True)]
        total = [max((o - 1) * s + e - i, 0) for o, s, e, i in zip(out, strides, eff, spatial, strict=True)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto == "SAME_UPPER" else (big, small)
        return strides, dil, begin, end, out
    if auto == "VALID":
        pads = [0] * (2 * nsp)
    begin, end = pads[:nsp], pads[nsp:]
    ceil_mode = bool(node.attr("ceil_mode", 0))
    out = []
    for i, s, e, pb, pe in zip(spatial, strides, eff, begin, end, strict=True):
        span = i + pb + pe - e
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= i + pb:  # the last window must start inside the input
            o -= 1
        out.append(o)
    return strides, dil, begin, end, out


def cpu_style(pc: PlanContext) -> bool:
    """Whether to use the kernel variants that suit CPU devices (PoCL) over the GPU ones."""
    return bool(pc.dctx.info.device_type == "cpu")


def _as2d(values: list[int], fill: int) -> list[int]:
    return [fill, *values] if len(values) == 1 else values


def _dims2d(
    kernel: Sequence[int], strides: list[int], dil: list[int], pads: list[int], shape: Sequence[int],
    out_spatial: list[int],
) -> tuple[int, ...]:
    """kh, kw, sh, sw, dh, dw, ph, pw, h, w, oh, ow: a 1-D convolution is run as 2-D with height 1."""
    return (
        *_as2d(list(kernel), 1), *_as2d(strides, 1), *_as2d(dil, 1), *_as2d(pads, 0),
        *_as2d(list(shape[2:]), 1), *_as2d(out_spatial, 1),
    )


@register("Conv")
def conv(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    w = np.asarray(pc.need_const(node.input(1), "Conv weights"), np.float32)
    if len(shape) not in (3, 4):
        raise Unsupported(f"{len(shape) - 2}-D convolution")
    bias = np.asarray(pc.const(node.input(2)), np.float32) if node.input(2) else np.zeros(w.shape[0], np.float32)
    if node.input(2) and pc.const(node.input(2)) is None:
        raise Unsupported("Conv bias is computed at run time")
    if node.bias is not None:
        bias = bias + np.asarray(pc.const(node.bias), np.float32)
    group = int(node.attr("group", 1))
    n, cin = shape[0], shape[1]
    cout, cin_g = w.shape[0], w.shape[1]
    if cin_g * group != cin or cout % group:
        raise Unsupported(f"Conv channels {cin} / group {group} do not match weights {w.shape}")
    kernel = tuple(w.shape[2:])
    strides, dil, pb, pe, osp = conv_geometry(node, shape, kernel)
    if min(osp) < 1:
        raise Unsupported(f"Conv output would be empty ({osp})")
    src = pc.device(x, ("cl",))
    out_shape = (n, cout, *osp)
    out = pc.define(node.outputs[0], out_shape, "cl")
    kh, kw, sh, sw, dh, dw, ph, pw, h, wd, oh, ow = _dims2d(kernel, strides, dil, pb, shape, osp)
    m = n * oh * ow
    if group == cin and cout % cin == 0 and group > 1:
        _depthwise(node, pc, src, out, w, bias, (n, h, wd, cin, oh, ow, cout, kh, kw, sh, sw, ph, pw, dh, dw))
        return
    kdim = kh * kw * cin_g
    cout_g = cout // group
    wg = [ConstB(kdim, cout_g, _filter_loader(w, g, group, kh * kw)) for g in range(group)]
    pointwise = kh == kw == 1 and sh == sw == 1 and ph == pw == 0 and max(pe, default=0) == 0
    if pointwise and group == 1:
        gemm_call(pc, src, (m, cin), wg[0], bias, out, node.activation, key=f"conv:{node.name}")
        return
    rows = max(1, min(m, IM2COL_BUDGET // (4 * kdim)))
    col = pc.scratch(rows * kdim, "im2col")
    tmp = pc.scratch(rows * cout_g, "group_out") if group > 1 else None
    per_tap = cpu_style(pc)  # see kernels/conv.cl: im2col_tap
    im2col = "im2col_tap" if per_tap else "im2col"
    for g in range(group):
        b_g = bias[g * cout_g : (g + 1) * cout_g]
        for m0 in range(0, m, rows):
            r = min(rows, m - m0)
            kernel_step(pc, "conv", im2col, (kh * kw, r) if per_tap else (kdim, r),
                        [Buf(src), Buf(col), i32(m0), i32(r), i32(h), i32(wd), i32(cin), i32(oh), i32(ow),
                         i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw),
                         i32(g * cin_g), i32(cin_g)],
                        inputs=[src], outputs=[col], label="Conv im2col",
                        local_size=(1, 64) if per_tap else None)  # fmt: skip
            if tmp is None:
                gemm_call(pc, col, (r, kdim), wg[g], b_g, out, node.activation, key=f"conv:{node.name}:{g}",
                          out_offset=m0 * cout, inputs=[col], m_params=rows)
            else:
                gemm_call(pc, col, (r, kdim), wg[g], b_g, tmp, node.activation, key=f"conv:{node.name}:{g}",
                          inputs=[col], m_params=rows)
                kernel_step(pc, "shape", "copy_block", (cout_g, r),
                            [Buf(tmp), i32(0), Buf(out), i32(m0 * cout), i32(r), i32(cout_g), i32(cout),
                             i32(g * cout_g), i32(0)], inputs=[tmp], outputs=[out], label="Conv group")  # fmt: skip


def _filter_loader(w: np.ndarray, g: int, group: int, taps: int) -> Callable[[], np.ndarray]:
    """Group ``g`` of a (Cout, Cin/g, KH, KW) filter as (KH*KW*Cin/g, Cout/g), rows ordered (ky, kx, c) like im2col."""
    cout_g = w.shape[0] // group

    def load() -> np.ndarray:
        wgrp = w[g * cout_g : (g + 1) * cout_g].reshape(cout_g, -1, taps)
        return wgrp.transpose(2, 1, 0).reshape(-1, cout_g)

    return load


def _depthwise(node: Node, pc: PlanContext, src: str, out: str, w: np.ndarray, bias: np.ndarray,
               dims: tuple[int, ...]) -> None:  # fmt: skip
    n, h, wd, cin, oh, ow, cout, kh, kw, sh, sw, ph, pw, dh, dw = dims
    wt = pc.weight(f"dw:{node.name}", w.reshape(cout, kh * kw).T.copy())
    bt = pc.weight(f"dwb:{node.name}", bias)
    if cpu_style(pc) and cout == cin:
        kernel_step(pc, "conv", "depthwise_pixel", (n * oh * ow,),
                    [Buf(src), Buf(wt), Buf(bt), Buf(out), i32(n), i32(h), i32(wd), i32(cin), i32(oh), i32(ow),
                     i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw),
                     *act_args(node.activation)],
                    inputs=[src, wt, bt], outputs=[out], label="Conv depthwise")  # fmt: skip
        return
    kernel_step(pc, "conv", "depthwise", (cout, n * oh * ow),
                [Buf(src), Buf(wt), Buf(bt), Buf(out), i32(n), i32(h), i32(wd), i32(cin), i32(oh), i32(ow),
                 i32(cout), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw),
                 i32(cout // cin), *act_args(node.activation)],
                inputs=[src, wt, bt], outputs=[out], label="Conv depthwise")  # fmt: skip


@register("ConvTranspose")
def conv_transpose(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    w = np.asarray(pc.need_const(node.input(1), "ConvTranspose weights"), np.float32)
    if len(shape) not in (3, 4) or int(node.attr("group", 1)) != 1:
        raise Unsupported("ConvTranspose with groups or beyond 2-D")
    n, cin = shape[0], shape[1]
    cout = w.shape[1]
    bias = np.asarray(pc.const(node.input(2)), np.float32) if node.input(2) else np.zeros(cout, np.float32)
    if node.input(2) and pc.const(node.input(2)) is None:
        raise Unsupported("ConvTranspose bias is computed at run time")
    kernel = tuple(w.shape[2:])
    strides, dil, pb, _pe, osp = conv_geometry(node, shape, kernel, transposed=True)
    if min(osp) < 1:
        raise Unsupported("ConvTranspose output would be empty")
    kh, kw, sh, sw, dh, dw, ph, pw, h, wd, oh, ow = _dims2d(kernel, strides, dil, pb, shape, osp)
    src = pc.device(x, ("cl",))
    out = pc.define(node.outputs[0], (n, cout, *osp), "cl")
    m, kcols = n * h * wd, kh * kw * cout

    def wmat() -> np.ndarray:  # (Cin, Cout, KH, KW) -> (Cin, KH*KW*Cout) with columns ordered (ky, kx, co)
        return w.reshape(cin, cout, kh * kw).transpose(0, 2, 1).reshape(cin, kcols)

    col = pc.scratch(m * kcols, "convtranspose_col")
    gemm_call(pc, src, (m, cin), ConstB(cin, kcols, wmat), None, col, ("none", ()), key=f"convT:{node.name}")
    bt = pc.weight(f"ctb:{node.name}", bias)
    kernel_step(pc, "conv", "col2im_transposed", (cout, n * oh * ow),
                [Buf(col), Buf(bt), Buf(out), i32(n), i32(h), i32(wd), i32(oh), i32(ow), i32(cout), i32(kh), i32(kw),
                 i32(sh), i32(sw), i32(ph), i32(pw), i32(dh), i32(dw), *act_args(node.activation)],
                inputs=[col, bt], outputs=[out], label="ConvTranspose col2im")  # fmt: skip

