"""How much arithmetic each node does, for the OpenCL FLOP share.

Counts follow the usual convention: a multiply-add is two FLOPs; pooling
and reductions count one per input cell read; element-wise ops one per
output element (plus one for a fused bias and one for a fused activation);
pure data movement (reshape, transpose, concat, slice, gather, pad, cast)
counts zero. Ops this table does not know count one per element of their
largest input or output, so an unknown op is never free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .graph import Node

__all__ = ["MOVEMENT_OPS", "node_flops"]

MOVEMENT_OPS = {
    "Reshape", "Transpose", "Concat", "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten", "Identity",
    "Dropout", "Cast", "Pad", "Expand", "Split", "Tile", "Shape", "Size", "ConstantOfShape", "DepthToSpace",
    "SpaceToDepth", "GatherElements", "ScatterND", "Range",
}  # fmt: skip


def _n(shape: Sequence[int] | None) -> float:
    return float(np.prod(shape, dtype=np.float64)) if shape is not None else 0.0


def node_flops(node: Node, ins: Sequence[tuple[int, ...] | None], outs: Sequence[tuple[int, ...] | None]) -> float:
    """FLOPs of ``node`` given its input and output shapes (None where unknown)."""
    op = node.op
    out = _n(outs[0]) if outs else 0.0
    base: float
    if op == "Conv" and len(ins) > 1 and ins[1] is not None:
        base = 2.0 * out * _n(ins[1][1:])
    elif op == "ConvTranspose" and len(ins) > 1 and ins[1] is not None and ins[0] is not None:
        base = 2.0 * _n(ins[0]) * _n(ins[1][1:])
    elif op == "Gemm" and ins and ins[0] is not None:
        k = ins[0][0] if node.attr("transA", 0) else ins[0][1]
        base = 2.0 * out * k
    elif op == "MatMul" and ins and ins[0] is not None:
        base = 2.0 * out * (ins[0][-1] if ins[0] else 1)
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        base = out * _n(node.attr("kernel_shape", [1]))
    elif op.startswith("Global") or op.startswith("Reduce") or op in ("ArgMax", "ArgMin"):
        base = _n(ins[0]) if ins else out
    elif op in ("Softmax", "LogSoftmax"):
        base = 5.0 * out
    elif op in ("ChannelAffine", "BatchNormalization", "InstanceNormalization"):
        base = 2.0 * out
    elif op == "LRN":
        base = out * (int(node.attr("size", 1)) + 3)
    elif op == "LayerNormalization":
        base = 8.0 * out
    elif op == "Resize":
        base = out * (8.0 if node.attr("mode", "nearest") == "linear" else 1.0)
    elif op == "ElementwiseChain":
        base = out * len(node.attr("program", []))
    elif op == "Sum":
        base = out * max(len(ins) - 1, 1)
    elif op in MOVEMENT_OPS:
        base = 0.0
    elif op in _ELEMENTWISE:
        base = out
    else:
        base = max([out, *(_n(s) for s in ins)])
    if node.bias is not None:
        base += out
    if node.activation[0] != "none":
        base += out
    return base


_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip",
    "HardSigmoid", "HardSwish", "Exp", "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Elu", "Softplus", "Erf",
    "Gelu", "Floor", "Ceil", "Sin", "Cos", "Selu", "Softsign", "Round", "Sign", "PRelu", "Mish", "Celu",
    "Mod", "Where", "Equal", "Less", "Greater", "Not", "And", "Or",
}  # fmt: skip
