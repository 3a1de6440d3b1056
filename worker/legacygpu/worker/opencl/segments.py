"""onnxruntime subgraphs for the nodes OpenCL does not run.

While planning, each node that falls back becomes a one-node ``fallback``
step; :func:`infer_shapes` gives its outputs' shapes (onnx shape inference
with the concrete input shapes, or one run on zeros when inference cannot
tell, e.g. for ``ai.onnx.ml`` ops). :func:`merge` then joins consecutive
fallback steps into one step per run of nodes, so a tail of unsupported ops
(``ArgMax -> ArrayFeatureExtractor -> Cast``) is one onnxruntime session and
one round trip, not four. Downloads of device values a segment needs are
moved in front of it.

At run time a segment checks that onnxruntime produced the shapes the plan
expected; an op whose output shape depends on data (``NonZero``, ...) can
break that promise, and :class:`ShapeChanged` tells the executor to run that
call on onnxruntime whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError

from .plan import Binding, Plan, Step

__all__ = ["ShapeChanged", "build_model", "infer_shapes", "merge", "ort_session"]

log = logging.getLogger(__name__)

Spec = tuple[tuple[int, ...], np.dtype]


class ShapeChanged(Exception):
    """An onnxruntime segment produced a shape the plan did not expect."""


def build_model(
    protos: Sequence[Any],
    inputs: dict[str, Spec],
    consts: dict[str, np.ndarray],
    outputs: dict[str, Spec | None],
    opsets: dict[str, int],
    ir_version: int,
) -> Any:
    from onnx import helper, numpy_helper

    def info(name: str, spec: Spec | None) -> Any:
        if spec is None:
            return helper.make_empty_tensor_value_info(name)
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(spec[1]), list(spec[0]))

    graph = helper.make_graph(
        list(protos), "fallback",
        [info(n, s) for n, s in inputs.items()],
        [info(n, s) for n, s in outputs.items()],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in consts.items()],
    )  # fmt: skip
    opset_ids = [helper.make_opsetid(d, v) for d, v in opsets.items()]
    return helper.make_model(graph, opset_imports=opset_ids, ir_version=max(int(ir_version), 7))


def ort_session(model: Any) -> Any:
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception classes
        raise ModelError(f"onnxruntime cannot run the fallback subgraph: {exc}") from exc


def infer_shapes(
    protos: Sequence[Any],
    inputs: dict[str, Spec],
    consts: dict[str, np.ndarray],
    outputs: list[str],
    opsets: dict[str, int],
    ir_version: int,
) -> dict[str, Spec]:
    """Concrete (shape, dtype) of ``outputs``: by shape inference, else by one run on zeros."""
    import onnx
    from onnx import helper

    model = build_model(protos, inputs, consts, dict.fromkeys(outputs), opsets, ir_version)
    found: dict[str, Spec] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        for vi in [*inferred.graph.output, *inferred.graph.value_info]:
            t = vi.type.tensor_type
            if vi.name not in outputs or not t.elem_type or not t.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if all(d is not None for d in dims):
                found[vi.name] = (tuple(int(d) for d in dims), np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)))
    except Exception as exc:  # inference is best effort; the probe below is the fallback
        log.debug("shape inference failed for %s: %s", [p.op_type for p in protos], str(exc))
    if all(o in found for o in outputs):
        return found
    session = ort_session(model)
    feeds = {n: np.zeros(s, d) for n, (s, d) in inputs.items()}
    try:
        results = session.run(outputs, feeds)
    except Exception as exc:  # onnxruntime's own exception classes
        raise ModelError(f"onnxruntime cannot run {[p.op_type for p in protos]}: {exc}") from exc
    return {n: (tuple(r.shape), r.dtype) for n, r in zip(outputs, results, strict=True)}


def merge(plan: Plan) -> None:
    """Join runs of consecutive fallback steps into single onnxruntime segments."""
    steps, merged = plan.steps, []
    i = 0
    while i < len(steps):
        if steps[i].kind != "fallback":
            merged.append(steps[i])
            i += 1
            continue
        group, moved = [steps[i]], []
        j = i + 1
        while j < len(steps) and steps[j].kind in ("fallback", "download"):
            (group if steps[j].kind == "fallback" else moved).append(steps[j])
            j += 1
        merged.extend(moved)
        merged.append(_segment(plan, group, [*merged, *steps[j:]]))
        i = j
    plan.steps = merged


def _segment(plan: Plan, group: list[Step], others: list[Step]) -> Step:
    produced = {o for s in group for o in s.outputs}
    needed = {n for s in others for n in s.inputs} | set(plan.outputs)
    outputs = [o for s in group for o in s.outputs if o in needed]
    feeds: dict[str, str] = {}
    consts: dict[str, np.ndarray] = {}
    for s in group:
        feeds.update({k: v for k, v in s.feeds.items() if k not in produced})
        consts.update(s.consts)
    protos = [p for s in group for p in s.onnx_nodes]
    label = "onnxruntime[" + ",".join(s.label for s in group) + "]"
    step = Step("fallback", label, list(dict.fromkeys(feeds.values())), outputs, None,
                nodes=[n for s in group for n in s.nodes], onnx_nodes=protos,
                reason="; ".join(dict.fromkeys(s.reason for s in group)), feeds=feeds, consts=consts)  # fmt: skip

    def bind(b: Binding) -> Any:
        vals = b.plan.values
        in_specs = {k: (vals[v].shape, vals[v].dtype) for k, v in feeds.items()}
        out_specs: dict[str, Spec | None] = {o: (vals[o].shape, vals[o].dtype) for o in outputs}
        opsets = b.plan.opsets
        session = ort_session(build_model(protos, in_specs, consts, out_specs, opsets, b.plan.ir_version))
        expected = [vals[o].shape for o in outputs]

        def run(host: dict[str, np.ndarray]) -> None:
            try:
                results = session.run(outputs, {k: host[v] for k, v in feeds.items()})
            except Exception as exc:  # onnxruntime's own exception classes
                raise ModelError(f"onnxruntime failed in {label}: {exc}") from exc
            for name, arr, shape in zip(outputs, results, expected, strict=True):
                if arr.shape != shape:
                    raise ShapeChanged(f"{name}: planned {shape}, got {arr.shape}")
                host[name] = arr

        return run

    step.bind = bind
    return step
