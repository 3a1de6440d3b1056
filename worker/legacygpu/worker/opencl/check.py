"""``model check``: will this model run on this card, and correctly?

:func:`check_model` loads a model on the chosen backend (``opencl`` by
default) and on onnxruntime's CPU provider, feeds both the same random
inputs built from the model's input specs (dynamic dimensions are 1 unless
given by name), and compares every output: the maximum absolute error and
the maximum error relative to the reference output's largest magnitude.
For the OpenCL backend it also reports, node by node, where each op ran
(OpenCL, onnxruntime, or folded away at plan time) and why an op fell back,
and the share of the model's FLOPs that ran on OpenCL.

Top-1 agreement (``top1_match``) is reported only for outputs that hold class
scores, by a rule on the output and on the graph (:func:`classifier_outputs`):
the reference output is floating point and, once trailing dimensions of 1 are
dropped, of shape ``(N, C)`` with ``C >= 2``; and the op producing it, looking
through ``Identity``, ``Cast``, ``Dropout``, ``Flatten``, ``Reshape`` and
``Squeeze``, is a classifier's last op: ``Softmax``, ``LogSoftmax``, ``Gemm``,
``MatMul``, a ``Conv`` (a 1x1 convolution head), or an ``Add`` of a bias to a
``MatMul``/``Gemm`` result. Any other output (a ``CumSum`` of shape ``(1, 3)``,
a pooled feature map) has ``top1_match: null``.

The result is plain data (:meth:`CheckResult.to_dict` is the CLI's JSON).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CheckResult",
    "OpReport",
    "OutputError",
    "check_model",
    "classifier_outputs",
    "compare",
    "has_class_score_shape",
    "random_inputs",
]

# Ops that pass class scores on unchanged in meaning: looked through to find the op that made an output.
_PASS_THROUGH = frozenset({"Identity", "Cast", "Dropout", "Flatten", "Reshape", "Squeeze"})
# The last op of a classifier: probabilities (Softmax), or logits (a fully connected layer, a 1x1 conv head).
_CLASSIFIER_HEADS = frozenset({"Softmax", "LogSoftmax", "Gemm", "MatMul", "Conv"})


@dataclass
class OutputError:
    name: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    reference_max: float
    top1_match: bool | None = None
    """For class scores (see the module docstring): whether every row's argmax agrees; else None."""


@dataclass
class OpReport:
    name: str
    op: str
    placement: str
    flops: float
    reason: str = ""
    fused: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    model: str
    backend: str
    device: str
    input_shapes: dict[str, list[int]]
    outputs: list[OutputError]
    opencl_flop_share: float
    total_flops: float
    ops: list[OpReport]

    @property
    def fallback_ops(self) -> list[OpReport]:
        return [o for o in self.ops if o.placement == "onnxruntime"]

    def op_summary(self) -> dict[str, dict[str, int]]:
        """op type -> {placement: count}."""
        out: dict[str, Counter[str]] = {}
        for o in self.ops:
            out.setdefault(o.op, Counter())[o.placement] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fallback_ops"] = [asdict(o) for o in self.fallback_ops]
        data["op_summary"] = self.op_summary()
        return data


def random_inputs(specs: Mapping[str, tuple[tuple[int, ...], np.dtype]], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a check: floats uniform in [0, 1), integers in {0, 1}, booleans at random."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in specs.items():
        if dtype.kind == "f":
            out[name] = rng.random(shape).astype(dtype)
        elif dtype.kind in "iu":
            out[name] = rng.integers(0, 2, shape).astype(dtype)
        elif dtype.kind == "b":
            out[name] = rng.random(shape) < 0.5
        else:
            out[name] = np.zeros(shape, dtype)
    return out


def has_class_score_shape(ref: np.ndarray) -> bool:
    """Whether ``ref`` is floating point and, trailing 1s dropped, of shape (N, C) with C >= 2."""
    shape = list(ref.shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape.pop()
    return ref.dtype.kind == "f" and len(shape) == 2 and shape[1] >= 2


def classifier_outputs(path: Path) -> set[str]:
    """Names of the graph outputs made by a classifier's last op (see the module docstring)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}

    def source(name: str) -> Any:
        node = producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producer.get(node.input[0])
        return node

    def is_head(node: Any) -> bool:
        if node is None:
            return False
        if node.op_type == "Add":  # a bias added to a fully connected layer
            return any(getattr(source(i), "op_type", "") in ("MatMul", "Gemm") for i in node.input)
        return node.op_type in _CLASSIFIER_HEADS

    return {o.name for o in graph.output if is_head(source(o.name))}


def compare(name: str, got: np.ndarray, ref: np.ndarray, *, class_scores: bool = True) -> OutputError:
    """Errors of ``got`` against ``ref``: the largest absolute difference, and that over ``ref``'s largest magnitude.

    ``top1_match`` (every row's argmax agrees) is filled in when ``class_scores``
    (what the caller knows of the output's producer, see :func:`classifier_outputs`)
    and ``ref`` has the shape of class scores (:func:`has_class_score_shape`); else None.
    """
    got64, ref64 = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got64.shape != ref64.shape:
        return OutputError(name, list(ref.shape), float("inf"), float("inf"), float(np.abs(ref64).max(initial=0)))
    diff = np.abs(got64 - ref64)
    max_abs = float(diff.max(initial=0.0)) if np.isfinite(diff).all() else float("inf")
    scale = float(np.abs(ref64).max(initial=0.0))
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    top1 = None
    if class_scores and has_class_score_shape(np.asarray(ref)):
        rows = ref64.shape[0]
        top1 = bool((got64.reshape(rows, -1).argmax(1) == ref64.reshape(rows, -1).argmax(1)).all())
    return OutputError(name, list(ref.shape), max_abs, rel, scale, top1)


def check_model(
    path: Path,
    *,
    backend: str = "opencl",
    dims: Mapping[str, int] | None = None,
    device_index: int | None = None,
    seed: int = 0,
    kernel_overrides: Mapping[str, str] | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> CheckResult:
    """Run ``path`` on ``backend`` and on onnxruntime and compare (see the module docstring)."""
    from legacygpu.worker.backends import create_backend
    from legacygpu.worker.backends.onnxruntime import OnnxRuntimeBackend

    from .executor import OpenCLModel
    from .graph import concrete_shapes, load_graph

    path = Path(path)
    if backend == "opencl" and kernel_overrides:
        from legacygpu.worker.backends.opencl import OpenCLBackend

        runner: Any = OpenCLBackend(device_index, kernel_overrides=kernel_overrides)
    else:
        runner = create_backend(backend, device_index)
    reference = OnnxRuntimeBackend().load(path)
    model = runner.load(path)
    graph_inputs = model.graph.inputs if isinstance(model, OpenCLModel) else load_graph(path).inputs
    shapes = concrete_shapes(graph_inputs, dict(dims or {}))
    specs = {s.name: (shapes[s.name], s.dtype) for s in graph_inputs}
    inputs = dict(feeds) if feeds is not None else random_inputs(specs, seed)
    got = model.run(inputs)
    want = reference.run(inputs)
    heads = classifier_outputs(path)
    outputs = [compare(n, got[n], want[n], class_scores=n in heads) for n in reference.output_names]
    ops: list[OpReport] = []
    share, total = 0.0, 0.0
    if isinstance(model, OpenCLModel):
        plan = model.plan({n: a.shape for n, a in inputs.items()}).plan
        ops = [OpReport(r.name, r.op, r.placement, r.flops, r.reason, r.sources) for r in plan.reports]
        share = plan.flop_share()
        total = sum(r.flops for r in plan.reports if r.placement != "folded")
    info = runner.info()
    return CheckResult(
        model=str(path),
        backend=runner.name,
        device=info.device,
        input_shapes={n: list(a.shape) for n, a in inputs.items()},
        outputs=outputs,
        opencl_flop_share=share,
        total_flops=total,
        ops=ops,
    )
