"""Softmax and LogSoftmax along one axis.

Before opset 13 ONNX's softmax flattens the tensor at ``axis`` (default 1)
and normalises each row of the 2-D result; from opset 13 it normalises
along the single axis ``axis`` (default -1). Both become an (outer, len,
inner) view; one work-group reduces each (outer, inner) line with the
max-subtracted exponential sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..graph import Node
from ..programs import i32
from .registry import Buf, kernel_step, nelem, norm_axis, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__: list[str] = []

WG = 64


@register("Softmax", "LogSoftmax")
def softmax(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    rank = len(shape)
    if pc.opset < 13:
        axis = norm_axis(node.attr("axis", 1), rank)
        outer, length, inner = nelem(shape[:axis]), nelem(shape[axis:]), 1
    else:
        axis = norm_axis(node.attr("axis", -1), rank)
        outer, length, inner = nelem(shape[:axis]), shape[axis], nelem(shape[axis + 1 :])
    src = pc.device(x, ("plain",))
    out = pc.define(node.outputs[0], shape)
    rows = outer * inner
    kernel_step(pc, "softmax", "softmax", (rows * WG,),
                [Buf(src), Buf(out), i32(length), i32(inner), i32(int(node.op == "LogSoftmax"))],
                inputs=[src], outputs=[out], local_size=(WG,))  # fmt: skip
