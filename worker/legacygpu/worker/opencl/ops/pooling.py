"""Pooling on channels-last activations: max, average, global, and LRN.

Every kernel runs one work-item per output element with the channel axis
fastest, so neighbouring work-items read neighbouring floats. Output sizes
follow ONNX (``pads``, ``auto_pad``, ``ceil_mode``, ``dilations``; a window
may not start in the end padding). ``count_include_pad`` picks the average
pool's divisor. 1-D pooling runs as 2-D with H = 1. ``MaxPool``'s optional
indices output is not produced here (such a node runs on onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graph import Node
from ..plan import Unsupported
from ..programs import f32, i32
from .conv import conv_geometry
from .registry import Buf, kernel_step, nelem, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__: list[str] = []


def _two(values: list[int], fill: int) -> list[int]:
    return [fill, *values] if len(values) == 1 else values


@register("MaxPool", "AveragePool")
def pool(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    if len(shape) not in (3, 4):
        raise Unsupported(f"{len(shape) - 2}-D pooling")
    if len([o for o in node.outputs if o]) > 1:
        raise Unsupported("MaxPool indices output")
    if node.attr("storage_order", 0):
        raise Unsupported("MaxPool storage_order")
    kernel = tuple(node.attr("kernel_shape"))
    strides, dil, pb, pe, osp = conv_geometry(node, shape, kernel)
    if node.op == "AveragePool" and max(dil) != 1:
        raise Unsupported("dilated AveragePool")
    if min(osp) < 1:
        raise Unsupported(f"pool output would be empty ({osp})")
    src = pc.device(x, ("cl",))
    n, c = shape[0], shape[1]
    out = pc.define(node.outputs[0], (n, c, *osp), "cl")
    kh, kw = _two(list(kernel), 1)
    sh, sw = _two(strides, 1)
    dh, dw = _two(dil, 1)
    ph, pw = _two(pb, 0)
    peh, pew = _two(pe, 0)
    h, w = _two(list(shape[2:]), 1)
    oh, ow = _two(osp, 1)
    common = [i32(n), i32(h), i32(w), i32(c), i32(oh), i32(ow), i32(kh), i32(kw), i32(sh), i32(sw), i32(ph), i32(pw)]
    if node.op == "MaxPool":
        kernel_step(pc, "pooling", "max_pool", (c, n * oh * ow),
                    [Buf(src), Buf(out), *common, i32(dh), i32(dw)], inputs=[src], outputs=[out])
    else:
        count_pad = int(node.attr("count_include_pad", 0))
        # ceil_mode windows that run past the end padding are clipped there (onnxruntime's divisor)
        kernel_step(pc, "pooling", "avg_pool", (c, n * oh * ow),
                    [Buf(src), Buf(out), *common, i32(peh), i32(pew), i32(count_pad)],
                    inputs=[src], outputs=[out])  # fmt: skip


@register("GlobalAveragePool", "GlobalMaxPool")
def global_pool(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    if len(shape) < 3:
        raise Unsupported("global pooling of a rank < 3 tensor")
    n, c = shape[0], shape[1]
    hw = nelem(shape[2:])
    fmts = ("cl",) if len(shape) in (3, 4) else ("plain",)
    src = pc.device(x, fmts)
    out_shape = (n, c, *([1] * (len(shape) - 2)))
    out = pc.define(node.outputs[0], out_shape, "cl" if fmts == ("cl",) else "plain")
    mode = 1 if node.op == "GlobalMaxPool" else 0
    if fmts == ("cl",):
        kernel_step(pc, "pooling", "global_pool", (c, n), [Buf(src), Buf(out), i32(n), i32(hw), i32(c), i32(mode)],
                    inputs=[src], outputs=[out])  # fmt: skip
    else:
        kernel_step(pc, "norm", "reduce_axis", (1, n * c),
                    [Buf(src), Buf(out), i32(n * c), i32(hw), i32(1), i32(2 if mode else 1)],
                    inputs=[src], outputs=[out])  # fmt: skip


@register("LRN")
def lrn(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    if len(shape) not in (3, 4):
        raise Unsupported("LRN of a rank other than 3 or 4")
    src = pc.device(x, ("cl",))
    out = pc.define(node.outputs[0], shape, "cl")
    total = nelem(shape)
    kernel_step(pc, "pooling", "lrn", (total,),
                [Buf(src), Buf(out), i32(total), i32(shape[1]), i32(int(node.attr("size"))),
                 f32(float(node.attr("alpha", 1e-4))), f32(float(node.attr("beta", 0.75))),
                 f32(float(node.attr("bias", 1.0)))], inputs=[src], outputs=[out])  # fmt: skip
