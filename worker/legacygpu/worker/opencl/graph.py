"""The executor's graph IR and ONNX loading.

:func:`load_graph` reads an ONNX file into a :class:`Graph`: nodes in
topological order with plain-Python attributes, every initializer and
``Constant`` node as a numpy array in ``Graph.consts``, the declared inputs
(without initializers that double as inputs) and outputs. Loading failures
(missing, truncated or malformed files, external data that cannot be found,
an invalid graph) become :class:`~legacygpu.core.errors.ModelError` whose
message names the file and repeats the parser's or checker's words.

A :class:`Node` keeps its original ``NodeProto`` while it is unchanged; the
graph passes (:mod:`~legacygpu.worker.opencl.passes`) that rewrite a node
(folded BatchNorm, fused bias or activation) drop it, and
:meth:`Node.to_onnx` rebuilds equivalent standard ONNX nodes from the IR so
any node, rewritten or not, can still be handed to onnxruntime when OpenCL
cannot run it. ``Node.sources`` lists the original node names a node stands
for, for reports.

Fused activations are recorded as ``Node.activation = (kind, params)`` with
kinds from :data:`ACTIVATION_IDS` (the ids the kernels understand).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError

__all__ = [
    "ACTIVATION_IDS",
    "Graph",
    "Node",
    "ValueSpec",
    "concrete_shapes",
    "load_graph",
    "onnx_dtype",
]

log = logging.getLogger(__name__)

# Activation kinds -> the ids of ``apply_act`` in kernels/common.cl.
ACTIVATION_IDS: dict[str, int] = {
    "none": 0,
    "relu": 1,
    "clip": 2,
    "sigmoid": 3,
    "tanh": 4,
    "leaky_relu": 5,
    "hard_sigmoid": 6,
    "hard_swish": 7,
    "relu6": 26,
}


def onnx_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX TensorProto element type."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError) as exc:
        raise ModelError(f"tensor element type {elem_type} is not supported") from exc


@dataclass(frozen=True)
class ValueSpec:
    """A declared graph input or output: dims are ints, or names/None when dynamic."""

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: np.dtype


@dataclass
class Node:
    """One operation of the graph."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    proto: Any = None
    sources: list[str] = field(default_factory=list)
    activation: tuple[str, tuple[float, ...]] = ("none", ())
    bias: str | None = None
    """A fused bias constant (Gemm/MatMul/Conv epilogue) added by the passes."""
    composite: list[Node] = field(default_factory=list)
    """For a node that replaced a group of nodes (a fused chain): the original nodes."""

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def input(self, i: int) -> str:
        """The i-th input name, '' when absent."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def to_onnx(self, consts: dict[str, np.ndarray]) -> list[Any]:
        """Standard ONNX nodes computing the same as this (possibly rewritten) node.

        New constants the rebuilt nodes need are added to ``consts``.
        """
        from onnx import helper

        if self.composite:
            return [p for n in self.composite for p in n.to_onnx(consts)]
        if self.proto is not None and self.activation[0] == "none" and self.bias is None:
            if list(self.proto.input) == self.inputs:
                return [self.proto]
            proto = type(self.proto)()  # a pass renamed an input (e.g. a removed Cast): not the stored names
            proto.CopyFrom(self.proto)
            del proto.input[:]
            proto.input.extend(self.inputs)
            return [proto]
        if self.op == "ChannelAffine":
            return _affine_to_onnx(self, consts)
        out = self.outputs[0]
        main_out = out if self.activation[0] == "none" and self.bias is None else f"{out}__pre_epilogue"
        nodes = [
            helper.make_node(
                self.op, list(self.inputs), [main_out, *self.outputs[1:]], name=self.name,
                domain=self.domain or None, **self.attrs,
            )
        ]  # fmt: skip
        cur = main_out
        if self.bias is not None:
            nxt = out if self.activation[0] == "none" else f"{out}__pre_act"
            nodes.append(helper.make_node("Add", [cur, self.bias], [nxt], name=f"{self.name}__bias"))
            cur = nxt
        if self.activation[0] != "none":
            nodes.extend(_activation_to_onnx(self, cur, out, consts))
        return nodes


def _activation_to_onnx(node: Node, src: str, dst: str, consts: dict[str, np.ndarray]) -> list[Any]:
    from onnx import helper

    kind, params = node.activation
    name = f"{node.name}__act"
    if kind == "relu":
        return [helper.make_node("Relu", [src], [dst], name=name)]
    if kind == "sigmoid":
        return [helper.make_node("Sigmoid", [src], [dst], name=name)]
    if kind == "tanh":
        return [helper.make_node("Tanh", [src], [dst], name=name)]
    if kind == "leaky_relu":
        return [helper.make_node("LeakyRelu", [src], [dst], name=name, alpha=float(params[0]))]
    if kind == "hard_sigmoid":
        return [helper.make_node("HardSigmoid", [src], [dst], name=name, alpha=params[0], beta=params[1])]
    if kind in ("clip", "relu6"):
        lo, hi = params if kind == "clip" else (0.0, 6.0)
        lo_name, hi_name = f"{name}__lo", f"{name}__hi"
        consts[lo_name] = np.array(lo, np.float32)
        consts[hi_name] = np.array(hi, np.float32)
        return [helper.make_node("Clip", [src, lo_name, hi_name], [dst], name=name)]
    raise ModelError(f"activation {kind} has no ONNX form")


def _affine_to_onnx(node: Node, consts: dict[str, np.ndarray]) -> list[Any]:
    """A ChannelAffine as BatchNormalization with mean 0, variance 1, epsilon 0 (exact, any rank)."""
    from onnx import helper

    scale = consts[node.inputs[1]]
    m_name, v_name = f"{node.name}__zero_mean", f"{node.name}__unit_var"
    consts[m_name] = np.zeros(scale.size, np.float32)
    consts[v_name] = np.ones(scale.size, np.float32)
    out = node.outputs[0]
    pre = out if node.activation[0] == "none" else f"{out}__pre_act"
    nodes = [
        helper.make_node(
            "BatchNormalization", [node.inputs[0], node.inputs[1], node.inputs[2], m_name, v_name], [pre],
            name=node.name, epsilon=0.0,
        )
    ]  # fmt: skip
    if node.activation[0] != "none":
        nodes.extend(_activation_to_onnx(node, pre, out, consts))
    return nodes


@dataclass
class Graph:
    """A loaded model: nodes in topological order plus its constants."""

    nodes: list[Node]
    inputs: list[ValueSpec]
    outputs: list[ValueSpec]
    consts: dict[str, np.ndarray]
    opsets: dict[str, int]
    name: str = "model"
    ir_version: int = 8
    ranks: dict[str, int] = field(default_factory=dict)
    """Rank of each value onnx shape inference could tell (for rank-dependent rewrites)."""
    types: dict[str, int] = field(default_factory=dict)
    """ONNX element type of each value shape inference could tell."""

    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 13))

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    out.setdefault(name, []).append(node)
        return out

    def output_names(self) -> set[str]:
        return {o.name for o in self.outputs}

    def sole_consumer(self, node: Node, consumers: dict[str, list[Node]]) -> Node | None:
        """The one node reading ``node``'s first output, if it is the only reader and no other output is read."""
        out = node.outputs[0]
        outputs = self.output_names()
        if out in outputs:
            return None
        users = consumers.get(out, [])
        extra_used = any(o and (o in consumers or o in outputs) for o in node.outputs[1:])
        if len(users) != 1 or extra_used or users[0].inputs.count(out) != 1:
            return None
        return users[0]

    def activation_of(self, node: Node) -> tuple[str, tuple[float, ...]] | None:
        """The fusable activation ``node`` computes (a kind of :data:`ACTIVATION_IDS` and its params), or None."""
        op = node.op
        if op == "Relu":
            return ("relu", ())
        if op == "Sigmoid":
            return ("sigmoid", ())
        if op == "Tanh":
            return ("tanh", ())
        if op == "LeakyRelu":
            return ("leaky_relu", (float(node.attr("alpha", 0.01)),))
        if op == "HardSigmoid":
            return ("hard_sigmoid", (float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))))
        if op == "HardSwish":
            return ("hard_swish", ())
        if op == "Clip":
            if "min" in node.attrs or "max" in node.attrs:
                lo, hi = float(node.attr("min", -3.4e38)), float(node.attr("max", 3.4e38))
            else:
                bounds: list[float] = []
                for i, default in ((1, -3.4e38), (2, 3.4e38)):
                    name = node.input(i)
                    if name and name not in self.consts:
                        return None
                    bounds.append(float(self.consts[name]) if name else default)
                lo, hi = bounds
            return ("relu6", ()) if (lo, hi) == (0.0, 6.0) else ("clip", (lo, hi))
        return None


def concrete_shapes(specs: list[ValueSpec], dims: dict[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Input shapes with each dynamic dimension taken from ``dims`` (by its name) or set to 1."""
    dims = dict(dims or {})
    shapes = {}
    for spec in specs:
        shape = []
        for d in spec.shape or ():
            if isinstance(d, int) and d > 0:
                shape.append(d)
            else:
                shape.append(int(dims.get(str(d), 1)) if d else 1)
        shapes[spec.name] = tuple(shape)
    return shapes


def _value_spec(vi: Any) -> ValueSpec:
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ModelError(f"graph value {vi.name!r} is not a tensor; only tensor inputs/outputs are supported")
    shape: tuple[int | str | None, ...] | None = None
    if t.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
    return ValueSpec(vi.name, shape, onnx_dtype(t.elem_type))


def _attrs(proto: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in proto.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        out[a.name] = value
    return out


def _constant_value(node: Any, attrs: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype)
    raise ModelError(f"Constant node {node.name!r} has no supported value attribute")


def _read_model(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"cannot parse {path.name}: {exc} (truncated or not an ONNX file?)") from exc
    except Exception as exc:  # protobuf raises a few undocumented classes on garbage
        raise ModelError(f"cannot parse {path.name}: {type(exc).__name__}: {exc}") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"cannot load {path.name}: the file holds no graph (truncated or not an ONNX model)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        # The checker is stricter than onnxruntime (e.g. about missing output types): a model
        # onnxruntime accepts is loaded with a warning; one it refuses too is an error.
        try:
            import onnxruntime

            onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as ort_exc:  # onnxruntime's own exception classes
            raise ModelError(f"invalid model {path.name}: {exc} (onnxruntime: {ort_exc})") from exc
        # str(exc), not exc: a handler that keeps log records would keep the traceback, its frames and the model
        log.warning("%s does not pass the ONNX checker but onnxruntime loads it: %s", path.name, str(exc))
    return model


def load_graph(path: Path) -> Graph:
    """Load ``path`` into a :class:`Graph`; every failure is a ModelError naming the file."""
    from onnx import numpy_helper

    path = Path(path)
    model = _read_model(path)
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    try:
        for init in g.initializer:
            consts[init.name] = numpy_helper.to_array(init, base_dir=str(path.parent))
    except Exception as exc:  # external data missing, bad raw data size
        raise ModelError(f"cannot read the weights of {path.name}: {exc}") from exc
    nodes: list[Node] = []
    for i, proto in enumerate(g.node):
        name = proto.name or f"{proto.op_type}_{i}"
        attrs = _attrs(proto)
        if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
            consts[proto.output[0]] = _constant_value(proto, attrs)
            continue
        if not proto.name:
            proto = _renamed(proto, name)
        nodes.append(
            Node(name, proto.op_type, list(proto.input), list(proto.output), attrs,
                 proto.domain, proto, [name])
        )  # fmt: skip
    inputs = [_value_spec(vi) for vi in g.input if vi.name not in consts]
    outputs = [_value_spec(vi) for vi in g.output]
    opsets = {o.domain: o.version for o in model.opset_import}
    ranks, types = _infer_value_info(model)
    return Graph(nodes, inputs, outputs, consts, opsets, path.stem, model.ir_version, ranks, types)


def _infer_value_info(model: Any) -> tuple[dict[str, int], dict[str, int]]:
    """Ranks and element types onnx shape inference finds (empty when it fails: an optimisation aid only)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # inference errors must not stop a model from loading
        log.debug("shape inference failed: %s", str(exc))
        return {}, {}
    ranks, types = {}, {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
        if t.elem_type:
            types[vi.name] = t.elem_type
    return ranks, types


def _renamed(proto: Any, name: str) -> Any:
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.name = name
    return copy
