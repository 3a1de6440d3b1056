"""Resize / Upsample of the two spatial axes of NCHW tensors, nearest or bilinear.

Runs on channels-last data. Scales come from ``scales`` or are derived from
``sizes`` (ONNX: output = floor(input * scale); with ``sizes`` the scale is
output / input). The coordinate transformation and nearest rounding modes
are the ONNX ones; ``tf_crop_and_resize``, cubic mode, anti-aliasing and
``keep_aspect_ratio_policy`` other than stretch run on onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..graph import Node
from ..plan import Unsupported
from ..programs import f32, i32
from .registry import Buf, kernel_step, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__: list[str] = []

_COORD = {"half_pixel": 0, "asymmetric": 1, "align_corners": 2, "pytorch_half_pixel": 3,
          "tf_half_pixel_for_nn": 4}  # fmt: skip
_NEAREST = {"round_prefer_floor": 0, "round_prefer_ceil": 1, "floor": 2, "ceil": 3}


def _scales_sizes(node: Node, pc: PlanContext) -> tuple[np.ndarray | None, np.ndarray | None]:
    if node.op == "Upsample":
        if node.input(1):
            return np.asarray(pc.need_const(node.input(1), "Upsample scales"), np.float64), None
        return np.asarray(node.attr("scales"), np.float64), None
    if pc.opset < 11:
        return np.asarray(pc.need_const(node.input(1), "Resize scales"), np.float64), None
    scales = pc.const(node.input(2)) if node.input(2) else None
    sizes = pc.const(node.input(3)) if node.input(3) else None
    if (node.input(2) and scales is None) or (node.input(3) and sizes is None):
        raise Unsupported("Resize scales/sizes are computed at run time")
    if scales is not None and np.asarray(scales).size == 0:
        scales = None
    if sizes is not None and np.asarray(sizes).size == 0:
        sizes = None
    return (None if scales is None else np.asarray(scales, np.float64),
            None if sizes is None else np.asarray(sizes, np.int64))  # fmt: skip


@register("Resize", "Upsample")
def resize(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    if len(shape) != 4:
        raise Unsupported("Resize of a tensor that is not 4-D")
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise Unsupported(f"Resize mode {mode}")
    if node.attr("antialias", 0) or node.attr("axes") is not None:
        raise Unsupported("Resize antialias/axes")
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported("Resize keep_aspect_ratio_policy")
    cmode = node.attr("coordinate_transformation_mode", "half_pixel" if pc.opset >= 11 else "asymmetric")
    if node.op == "Upsample" or pc.opset < 11:
        cmode = "asymmetric"
    if cmode not in _COORD:
        raise Unsupported(f"Resize coordinate mode {cmode}")
    nmode = node.attr("nearest_mode", "round_prefer_floor" if pc.opset >= 11 else "floor")
    if node.op == "Upsample" or pc.opset < 11:
        nmode = "floor"
    scales, sizes = _scales_sizes(node, pc)
    if sizes is not None:
        out = [int(s) for s in sizes]
        sc = [o / i for o, i in zip(out, shape, strict=True)]
    elif scales is not None and scales.size == 4:
        sc = [float(s) for s in scales]
        out = [int(np.floor(i * s)) for i, s in zip(shape, sc, strict=True)]
    else:
        raise Unsupported("Resize without 4 scales or sizes")
    if out[0] != shape[0] or out[1] != shape[1]:
        raise Unsupported("Resize of the batch or channel axis")
    src = pc.device(x, ("cl",))
    dst = pc.define(node.outputs[0], out, "cl")
    n, c, h, w = shape
    oh, ow = out[2], out[3]
    kernel_step(pc, "resize", "resize", (c, n * oh * ow),
                [Buf(src), Buf(dst), i32(n), i32(h), i32(w), i32(c), i32(oh), i32(ow), f32(sc[2]), f32(sc[3]),
                 i32(0 if mode == "nearest" else 1), i32(_COORD[cmode]), i32(_NEAREST.get(nmode, 0))],
                inputs=[src], outputs=[dst])  # fmt: skip
