"""Turning a graph and concrete input shapes into a :class:`~.plan.Plan`.

Nodes are visited in topological order. For each one:

1. ``Shape``/``Size`` of a value become constants (every shape is known
   once the input shapes are), and so does any node whose inputs are all
   constants: shape arithmetic, ``Reshape`` targets, ``ConstantOfShape``.
2. Otherwise the node's op planner (:data:`~.ops.REGISTRY`) tries to place
   it on OpenCL. It may refuse (:class:`~.plan.Unsupported`: an attribute it
   does not implement, a non-float tensor, a kernel family that failed to
   build on this driver); its partial work is rolled back.
3. A refused or unknown node runs on onnxruntime: its inputs are downloaded,
   its output shapes come from onnx shape inference (or, when that cannot
   tell, from running it once on zeros), and consecutive onnxruntime nodes
   are merged into one subgraph session (:mod:`~.segments`).

Then graph outputs are brought to the host, buffers are assigned
(:mod:`~.memory`) and the plan is checked against the device's memory.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError

from . import fold, memory, segments
from .flops import node_flops
from .graph import Graph, Node
from .ops import REGISTRY
from .plan import NodeReport, Plan, Step, Unsupported, Val
from .plancontext import PlanContext

__all__ = ["build_plan"]

log = logging.getLogger(__name__)

_OCL_DOMAINS = ("", "ai.onnx", "legacygpu")


def build_plan(
    graph: Graph,
    input_shapes: dict[str, tuple[int, ...]],
    *,
    dctx: Any,
    programs: Any,
    weights: Any,
    gemm: Any,
    disabled_ops: frozenset[str] = frozenset(),
) -> Plan:
    plan = Plan(dctx, programs, dict(input_shapes), opsets=dict(graph.opsets), ir_version=graph.ir_version)
    pc = PlanContext(plan, graph, weights, gemm)
    for spec in graph.inputs:
        plan.values[spec.name] = Val(spec.name, tuple(input_shapes[spec.name]), spec.dtype, "host")
    for name, arr in graph.consts.items():
        plan.values[name] = Val(name, arr.shape, arr.dtype, "const", const=arr)
    for node in graph.nodes:
        _plan_node(pc, node, disabled_ops)
    for spec in graph.outputs:
        if spec.name not in plan.values:
            raise ModelError(f"graph output {spec.name!r} is produced by no node")
        plan.outputs.append(pc.host(spec.name))
    segments.merge(plan)
    memory.assign(plan)
    memory.check(plan, weights)
    return plan


def _inputs(pc: PlanContext, node: Node) -> list[Val | None]:
    vals: list[Val | None] = []
    for name in node.inputs:
        if not name:
            vals.append(None)
            continue
        val = pc.plan.values.get(name)
        if val is None:
            raise ModelError(f"node {node.name!r} ({node.op}) reads {name!r}, which no node produces")
        vals.append(val)
    return vals


def _report(pc: PlanContext, node: Node, placement: str, reason: str = "") -> None:
    ins = [v.shape if v is not None else None for v in _inputs(pc, node)]
    outs = [pc.plan.values[o].shape if o in pc.plan.values else None for o in node.outputs if o]
    flops = 0.0 if placement == "folded" else node_flops(node, ins, outs)
    pc.plan.reports.append(NodeReport(node.name, node.op, list(node.sources), placement, flops, reason))


def _fold(pc: PlanContext, node: Node, vals: list[Val | None]) -> bool:
    if node.op in ("Shape", "Size") and vals and vals[0] is not None:
        shape = np.array(vals[0].shape, np.int64)
        if node.op == "Shape":
            value = shape[node.attr("start", 0) : node.attr("end")]
        else:
            value = np.array(int(np.prod(shape)), np.int64)
        pc.plan.values[node.outputs[0]] = Val(node.outputs[0], value.shape, value.dtype, "const", const=value)
        return True
    if not any(v is not None for v in vals) or any(v is not None and v.where != "const" for v in vals):
        return False
    out = fold.evaluate(node, [v.const if v is not None else None for v in vals], pc.opsets)
    if out is None:
        return False
    for name, value in zip(node.outputs, out, strict=False):
        if name:
            pc.plan.values[name] = Val(name, value.shape, value.dtype, "const", const=value)
    return True


def _plan_node(pc: PlanContext, node: Node, disabled: frozenset[str]) -> None:
    vals = _inputs(pc, node)
    if _fold(pc, node, vals):
        _report(pc, node, "folded")
        return
    impl = REGISTRY.get(node.op) if node.domain in _OCL_DOMAINS else None
    if impl is None:
        reason = f"no OpenCL kernel for {node.domain + '.' if node.domain else ''}{node.op}"
    elif node.op in disabled:
        reason = f"{node.op} disabled on OpenCL by configuration"
    else:
        pc.begin(node)
        try:
            impl(node, pc)
        except Unsupported as exc:
            pc.rollback()
            reason = str(exc)
        else:
            pc.commit()
            _report(pc, node, "opencl")
            return
    log.info("node %s (%s) runs on onnxruntime: %s", node.name, node.op, reason)
    _plan_fallback(pc, node, reason)
    _report(pc, node, "onnxruntime", reason)


def _plan_fallback(pc: PlanContext, node: Node, reason: str) -> None:
    pc.node = node
    extra: dict[str, np.ndarray] = {}
    protos = node.to_onnx(extra)
    feeds: dict[str, str] = {}
    consts: dict[str, np.ndarray] = dict(extra)
    produced = {o for p in protos for o in p.output}
    needed = [n for p in protos for n in p.input if n and n not in produced]  # composites read more than inputs
    for name in needed:
        if name in feeds or name in consts:
            continue
        val = pc.val(name)
        if val.where == "const":
            assert val.const is not None
            consts[name] = val.const
        else:
            feeds[name] = pc.host(name)
    specs = {n: (pc.val(v).shape, pc.val(v).dtype) for n, v in feeds.items()}
    outputs = [o for o in node.outputs if o]
    shapes = segments.infer_shapes(protos, specs, consts, outputs, pc.opsets, pc.graph.ir_version)
    for name in outputs:
        shape, dtype = shapes[name]
        pc.add_value(Val(name, shape, dtype, "host", origin=node.name))
    pc.emit(
        Step("fallback", node.op, list(feeds.values()), outputs, None, nodes=list(node.sources),
             onnx_nodes=protos, reason=reason, feeds=feeds, consts=consts)
    )  # fmt: skip
