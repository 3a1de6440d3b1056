"""Shape-independent graph rewrites run once when a model is loaded.

In order:

1. **Constant folding**: every node whose inputs are all constants is
   evaluated (:mod:`~legacygpu.worker.opencl.fold`) and replaced by its value.
2. **Identity removal**: ``Identity``, inference-mode ``Dropout`` and a
   ``Cast`` to the type its input already has vanish (their consumers read
   the input directly).
3. **BatchNorm to affine**: ``BatchNormalization`` with constant statistics
   becomes a per-channel ``ChannelAffine`` (``y = x * scale[c] + shift[c]``);
   a following ``Mul``/``Add`` by a per-channel constant is merged into it.
4. **Folding into Conv**: a ``ChannelAffine`` (or per-channel ``Mul``/``Add``)
   right after a ``Conv`` with constant weights is folded into the weights
   and bias.
5. **Bias fusion**: ``MatMul`` by a constant matrix followed by ``Add`` of a
   row vector, and ``Gemm`` with a constant ``C`` row, carry the bias in the
   node (the GEMM epilogue adds it).
6. **Layer norms** written out as nine ops become one node
   (:mod:`~legacygpu.worker.opencl.fusion`).
7. **Activation fusion**: ``Relu``, ``Clip``, ``Sigmoid``, ``Tanh``,
   ``LeakyRelu`` (and ``HardSigmoid`` for element-wise producers) following a
   node whose only consumer they are become that node's epilogue.
8. **Element-wise chains** become one node and one kernel (:mod:`~.fusion`).

A rewrite only happens when the intermediate value has one consumer and is
not a graph output, so every graph output keeps its name and meaning.
Ranks of intermediate values come from onnx shape inference at load time
(``Graph.ranks``); a rewrite that needs a rank it does not know is
skipped.
"""

from __future__ import annotations

import logging

import numpy as np

from . import fold
from .fusion import fuse_elementwise_chains, fuse_layer_norm
from .gemm import ACTIVATIONS
from .graph import Graph, Node

__all__ = ["optimize"]

log = logging.getLogger(__name__)

_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}  # fmt: skip
GEMM_ACTIVATIONS = frozenset(ACTIVATIONS) - {"none"}
"""What a Conv/Gemm/MatMul can take into its GEMM epilogue (the rest stay separate steps)."""
_GEMM_PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_ELEMENTWISE_PRODUCERS = {"ChannelAffine", "Add", "Sub", "Mul", "Div", "Sum"}


def optimize(graph: Graph) -> Graph:
    ranks = dict(graph.ranks)
    for name, arr in graph.consts.items():
        ranks[name] = arr.ndim
    fold_constants(graph)
    remove_identities(graph)
    batchnorm_to_affine(graph)
    merge_channel_ops(graph, ranks)
    fold_into_conv(graph)
    fuse_bias(graph)
    fuse_layer_norm(graph, ranks)
    fuse_activations(graph)
    fuse_elementwise_chains(graph, ranks)
    return graph


def fold_constants(graph: Graph) -> None:
    kept = []
    for node in graph.nodes:
        ins = [n for n in node.inputs if n]
        if ins and node.op not in _NONDETERMINISTIC and all(n in graph.consts for n in ins):
            values = [graph.consts.get(n) if n else None for n in node.inputs]
            out = fold.evaluate(node, values, graph.opsets)
            if out is not None:
                for name, value in zip(node.outputs, out, strict=False):
                    if name:
                        graph.consts[name] = value
                continue
        kept.append(node)
    graph.nodes = kept


def _rename_input(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if n == old else n for n in node.inputs]


def _same_type_cast(graph: Graph, node: Node) -> bool:
    """A Cast to the type its input already has (exporters leave many float-to-float casts)."""
    if node.op != "Cast" or node.attr("to") is None:
        return False
    return bool(graph.types.get(node.input(0)) == node.attr("to"))


def remove_identities(graph: Graph) -> None:
    outputs = graph.output_names()
    kept = []
    for node in graph.nodes:
        if _same_type_cast(graph, node) and node.outputs[0] not in outputs:
            _rename_input(graph, node.outputs[0], node.inputs[0])
            continue
        mask_used = node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1] and any(
            node.outputs[1] in n.inputs for n in graph.nodes
        )
        if node.op in ("Identity", "Dropout") and not mask_used and node.outputs[0] not in outputs:
            _rename_input(graph, node.outputs[0], node.inputs[0])
            continue
        kept.append(node)
    graph.nodes = kept


def _absorb(graph: Graph, keep: Node, gone: Node) -> None:
    """``gone`` (sole consumer of ``keep``) disappears; ``keep`` takes its output name."""
    keep.outputs[0] = gone.outputs[0]
    keep.sources.extend(gone.sources)
    keep.proto = None
    graph.nodes.remove(gone)


def batchnorm_to_affine(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op != "BatchNormalization" or len([o for o in node.outputs if o]) > 1:
            continue
        params = [graph.consts.get(n) for n in node.inputs[1:5]]
        if any(p is None for p in params):
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64).ravel() for p in params)
        scale = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
        shift = beta - mean * scale
        s_name, b_name = f"{node.name}__scale", f"{node.name}__shift"
        graph.consts[s_name] = scale.astype(np.float32)
        graph.consts[b_name] = shift.astype(np.float32)
        node.op, node.domain, node.proto = "ChannelAffine", "legacygpu", None
        node.inputs = [node.inputs[0], s_name, b_name]
        node.attrs = {}


def channel_vector(const: np.ndarray, rank: int | None) -> np.ndarray | None:
    """The per-channel (axis 1) vector a constant broadcasts as, against a rank-``rank`` tensor."""
    if rank is None or rank < 2 or const.ndim > rank or const.dtype.kind != "f":
        return None
    full = (1,) * (rank - const.ndim) + const.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1):
        return None
    return const.reshape(-1).astype(np.float32)


def merge_channel_ops(graph: Graph, ranks: dict[str, int]) -> None:
    """Fold Mul/Add/Sub by per-channel constants into the ChannelAffine or Conv before them."""
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        for node in list(graph.nodes):
            if node.op not in ("ChannelAffine", "Conv") or node.activation[0] != "none":
                continue
            if node.op == "Conv" and not _conv_foldable(graph, node):
                continue
            nxt = graph.sole_consumer(node, consumers)
            if nxt is None or nxt.op not in ("Mul", "Add", "Sub") or len(nxt.inputs) != 2:
                continue
            other = [n for n in nxt.inputs if n != node.outputs[0]]
            if len(other) != 1 or other[0] not in graph.consts or (nxt.op == "Sub" and nxt.inputs[1] != other[0]):
                continue
            vec = channel_vector(graph.consts[other[0]], ranks.get(node.outputs[0]) or ranks.get(node.inputs[0]))
            if vec is None:
                continue
            if node.op == "Conv":
                w = graph.consts[node.input(1)]
                cout = w.shape[0]
                bias = graph.consts[node.input(2)] if node.input(2) else np.zeros(cout, np.float32)
                scale, shift = np.ones(cout, np.float32), np.asarray(bias, np.float32)
            else:
                scale, shift = graph.consts[node.inputs[1]], graph.consts[node.inputs[2]]
            if vec.size not in (1, scale.size):
                continue
            if nxt.op == "Mul":
                scale, shift = scale * vec, shift * vec
            else:
                shift = shift + (vec if nxt.op == "Add" else -vec)
            s_name, b_name = f"{node.name}__scale", f"{node.name}__shift"
            if node.op == "Conv":
                s_name, b_name = f"{node.name}__w_folded", f"{node.name}__b_folded"
                graph.consts[s_name] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            else:
                graph.consts[s_name] = scale.astype(np.float32)
            graph.consts[b_name] = shift.astype(np.float32)
            node.inputs = [node.inputs[0], s_name, b_name]
            _absorb(graph, node, nxt)
            changed = True
            break


def _conv_foldable(graph: Graph, conv: Node) -> bool:
    return conv.input(1) in graph.consts and (not conv.input(2) or conv.input(2) in graph.consts)


def fold_into_conv(graph: Graph) -> None:
    """Fold a ChannelAffine (a BatchNorm) that follows a Conv into the Conv's weights and bias."""
    consumers = graph.consumers()
    for node in list(graph.nodes):
        if node.op != "Conv" or node.activation[0] != "none" or not _conv_foldable(graph, node):
            continue
        nxt = graph.sole_consumer(node, consumers)
        if nxt is None or nxt.op != "ChannelAffine":
            continue
        scale, shift = graph.consts[nxt.inputs[1]], graph.consts[nxt.inputs[2]]
        w = graph.consts[node.input(1)]
        if scale.size != w.shape[0]:
            continue
        bias = graph.consts[node.input(2)] if node.input(2) else np.zeros(w.shape[0], np.float32)
        w_name, b_name = f"{node.name}__w_folded", f"{node.name}__b_folded"
        graph.consts[w_name] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        graph.consts[b_name] = (bias * scale + shift).astype(np.float32)
        node.inputs = [node.inputs[0], w_name, b_name]
        node.activation = nxt.activation
        _absorb(graph, node, nxt)
        consumers = graph.consumers()


def fuse_bias(graph: Graph) -> None:
    consumers = graph.consumers()
    for node in list(graph.nodes):
        if node.op == "Gemm" and node.input(2) in graph.consts and node.input(1) in graph.consts:
            c = graph.consts[node.input(2)]
            b = graph.consts[node.input(1)]
            n = b.shape[0] if node.attr("transB", 0) else b.shape[1]
            if c.size == n and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1):
                name = f"{node.name}__bias"
                graph.consts[name] = (c.reshape(-1) * float(node.attr("beta", 1.0))).astype(np.float32)
                node.inputs, node.bias, node.proto = node.inputs[:2], name, None
                node.attrs.pop("beta", None)
        elif node.op == "MatMul" and node.input(1) in graph.consts and graph.consts[node.input(1)].ndim == 2:
            nxt = graph.sole_consumer(node, consumers)
            if nxt is None or nxt.op != "Add" or len(nxt.inputs) != 2:
                continue
            other = [n for n in nxt.inputs if n != node.outputs[0]]
            n = graph.consts[node.input(1)].shape[1]
            if len(other) != 1 or other[0] not in graph.consts:
                continue
            c = graph.consts[other[0]]
            if c.size != n or (c.ndim and c.shape[-1] != n) or c.dtype.kind != "f":
                continue
            name = f"{node.name}__bias"
            graph.consts[name] = c.reshape(-1).astype(np.float32)
            node.bias = name
            _absorb(graph, node, nxt)
            consumers = graph.consumers()


def fuse_activations(graph: Graph) -> None:
    consumers = graph.consumers()
    for node in list(graph.nodes):
        if node not in graph.nodes or node.activation[0] != "none":
            continue
        if node.op not in _GEMM_PRODUCERS and node.op not in _ELEMENTWISE_PRODUCERS:
            continue
        if node.op == "MatMul" and node.input(1) not in graph.consts:
            continue
        nxt = graph.sole_consumer(node, consumers)
        if nxt is None:
            continue
        act = graph.activation_of(nxt)
        if act is None or (node.op in _GEMM_PRODUCERS and act[0] not in GEMM_ACTIVATIONS):
            continue
        node.activation = act
        _absorb(graph, node, nxt)
        consumers = graph.consumers()
