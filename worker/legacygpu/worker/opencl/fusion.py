"""Multi-node fusions: decomposed layer norms and element-wise chains.

Both replace a group of nodes by one *composite* node that keeps the
originals (``Node.composite``), so onnxruntime can still run the group
unchanged when OpenCL cannot.

* **Layer norm**: exporters (Paddle, older PyTorch) write layer
  normalisation as ``ReduceMean -> Sub -> Pow 2 -> ReduceMean -> Add eps ->
  Sqrt -> Div [-> Mul gamma] [-> Add beta]``, nine kernels and two
  temporaries; it becomes one ``LayerNormalization`` over the last axis.
* **Element-wise chains**: a run of element-wise nodes, each reading the
  previous one's output (its only reader) and otherwise only constants that
  are scalars or per-channel vectors, or the chain's own input (``x *
  relu6(x + 3) / 6``, hard-swish, is ``Add -> Clip -> Div -> Mul(x)``),
  becomes one ``ElementwiseChain`` node: one kernel that keeps the value in
  a register through the whole chain. On a GPU that saves memory traffic;
  on PoCL, where each launch costs about a millisecond, it saves launches.

A chain's program is a list of instructions ``(kind, op, operand, p0, p1)``:
kind ``unary`` applies activation id ``op``; ``scalar`` applies binary op
``op`` with the constant ``p0``; ``channel`` with the entry of constant
vector ``operand`` along axis ``int(p0)`` (one axis per chain: the channel
axis of NCHW data, the last axis of NHWC data); ``input`` with the chain's
input value.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .graph import ACTIVATION_IDS, Graph, Node

__all__ = ["fuse_elementwise_chains", "fuse_layer_norm", "vector_axis"]

log = logging.getLogger(__name__)

_BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4, "Max": 5, "Min": 6, "Sum": 0}
_SWAPPED = {0: 0, 1: 8, 2: 2, 3: 9, 4: 10, 5: 5, 6: 6}
_UNARY = {"Relu": 1, "Sigmoid": 3, "Tanh": 4, "Exp": 8, "Log": 9, "Sqrt": 10, "Neg": 11, "Abs": 12,
          "Reciprocal": 13, "Erf": 16, "Floor": 18, "Ceil": 19, "Sin": 20, "Cos": 21, "Softsign": 23,
          "HardSwish": 7, "Sign": 25}  # fmt: skip


def _const(graph: Graph, name: str) -> np.ndarray | None:
    return graph.consts.get(name) if name else None


def _scalar(graph: Graph, name: str) -> float | None:
    value = _const(graph, name)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(-1)[0])


def _last_axis_only(node: Node, rank: int | None) -> bool:
    axes = node.attr("axes")
    if axes is None and node.input(1):
        return False
    return axes is not None and len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1)) \
        and node.attr("keepdims", 1) == 1


def fuse_layer_norm(graph: Graph, ranks: dict[str, int]) -> None:
    consumers = graph.consumers()
    for mean in list(graph.nodes):
        if mean not in graph.nodes or mean.op != "ReduceMean" or not _last_axis_only(mean, ranks.get(mean.input(0))):
            continue
        x = mean.input(0)
        sub = graph.sole_consumer(mean, consumers)
        if sub is None or sub.op != "Sub" or sub.inputs != [x, mean.outputs[0]]:
            continue
        d = sub.outputs[0]
        users = consumers.get(d, [])
        pow_ = next((u for u in users if u.op == "Pow"), None)
        div = next((u for u in users if u.op == "Div"), None)
        if len(users) != 2 or pow_ is None or div is None or _scalar(graph, pow_.input(1)) != 2.0:
            continue
        var = graph.sole_consumer(pow_, consumers)
        if var is None or var.op != "ReduceMean" or not _last_axis_only(var, ranks.get(d)):
            continue
        add = graph.sole_consumer(var, consumers)
        if add is None or add.op != "Add" or add.activation[0] != "none":
            continue
        eps = _scalar(graph, add.input(1))
        sqrt = graph.sole_consumer(add, consumers) if eps is not None else None
        if sqrt is None or sqrt.op != "Sqrt" or div.inputs != [d, sqrt.outputs[0]]:
            continue
        group = [mean, sub, pow_, var, add, sqrt, div]
        gamma = beta = None
        tail = div
        nxt = graph.sole_consumer(tail, consumers)
        if nxt is not None and nxt.op == "Mul" and nxt.input(0) == tail.outputs[0] \
                and _const(graph, nxt.input(1)) is not None:  # fmt: skip
            gamma, tail = nxt.input(1), nxt
            group.append(nxt)
            nxt = graph.sole_consumer(tail, consumers)
            if nxt is not None and nxt.op == "Add" and nxt.input(0) == tail.outputs[0] and nxt.activation[0] == "none" \
                    and _const(graph, nxt.input(1)) is not None:  # fmt: skip
                beta, tail = nxt.input(1), nxt
                group.append(nxt)
        if gamma is None:
            gamma = f"{mean.name}__ln_ones"
            graph.consts[gamma] = np.ones(1, np.float32)
        fused = Node(f"{mean.name}__layernorm", "LayerNormalization", [x, gamma, *([beta] if beta else [])],
                     [tail.outputs[0]], {"axis": -1, "epsilon": eps}, "", None,
                     [s for n in group for s in n.sources], composite=group)  # fmt: skip
        index = graph.nodes.index(tail)
        graph.nodes[index] = fused
        for n in group:
            if n is not tail:
                graph.nodes.remove(n)
        consumers = graph.consumers()


def vector_axis(const: np.ndarray, rank: int | None) -> int | None:
    """The one axis along which a float constant varies when broadcast against a rank-``rank`` tensor."""
    if rank is None or const.ndim > rank or const.dtype.kind != "f":
        return None
    full = (1,) * (rank - const.ndim) + const.shape
    axes = [i for i, d in enumerate(full) if d != 1]
    return axes[0] if len(axes) == 1 else None


def _instruction(graph: Graph, node: Node, value: str, x0: str, ranks: dict[str, int]) -> list[tuple[Any, ...]] | None:
    """The instructions computing ``node`` from the chain value ``value``, or None if it cannot join."""
    if len(node.outputs) != 1 or node.domain not in ("", "ai.onnx"):
        return None
    out: list[tuple[Any, ...]] = []
    if node.op in _UNARY and node.inputs == [value]:
        out.append(("unary", _UNARY[node.op], None, 0.0, 0.0))
    elif node.op in ("Relu", "Clip", "LeakyRelu", "HardSigmoid") and node.input(0) == value:
        act = graph.activation_of(node)
        if act is None:
            return None
        p = (*act[1], 0.0, 0.0)
        out.append(("unary", ACTIVATION_IDS[act[0]], None, p[0], p[1]))
    elif node.op in _BINARY and len(node.inputs) == 2 and value in node.inputs and node.inputs[0] != node.inputs[1]:
        first = node.inputs[0] == value
        other = node.inputs[1] if first else node.inputs[0]
        op = _BINARY[node.op] if first else _SWAPPED[_BINARY[node.op]]
        scalar = _scalar(graph, other)
        if other == x0:
            out.append(("input", op, None, 0.0, 0.0))
        elif scalar is not None and _const(graph, other).ndim <= (ranks.get(value) or 0):  # type: ignore[union-attr]
            out.append(("scalar", op, None, scalar, 0.0))
        else:
            const = _const(graph, other)
            axis = vector_axis(const, ranks.get(value)) if const is not None else None
            if axis is None:
                return None
            out.append(("channel", op, other, float(axis), 0.0))
    else:
        return None
    if node.activation[0] != "none":
        p = (*node.activation[1], 0.0, 0.0)
        out.append(("unary", ACTIVATION_IDS[node.activation[0]], None, p[0], p[1]))
    return out


def fuse_elementwise_chains(graph: Graph, ranks: dict[str, int]) -> None:
    consumers = graph.consumers()
    for start in list(graph.nodes):
        if start not in graph.nodes:
            continue
        x0 = next((n for n in start.inputs if n and n not in graph.consts), None)
        if x0 is None or (start.op in _BINARY and any(n not in graph.consts for n in start.inputs if n != x0)):
            continue
        program = _instruction(graph, start, x0, x0, ranks)
        if program is None:
            continue
        group, tail = [start], start
        while True:
            nxt = graph.sole_consumer(tail, consumers)
            step = _instruction(graph, nxt, tail.outputs[0], x0, ranks) if nxt is not None else None
            if step is None or len({i[3] for i in program + step if i[0] == "channel"}) > 1:
                break  # the end of the chain, or a vector along another axis than the chain's
            program += step
            group.append(nxt)  # type: ignore[arg-type]
            tail = nxt  # type: ignore[assignment]
        if len(group) < 2:
            continue
        vectors = list(dict.fromkeys(ins[2] for ins in program if ins[0] == "channel"))
        fused = Node(f"{start.name}__chain", "ElementwiseChain", [x0, *vectors], [tail.outputs[0]],
                     {"program": program}, "legacygpu", None, [s for n in group for s in n.sources],
                     composite=group)  # fmt: skip
        graph.nodes[graph.nodes.index(tail)] = fused
        for n in group[:-1]:
            graph.nodes.remove(n)
        consumers = graph.consumers()
