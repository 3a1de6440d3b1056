"""Element-wise ops: unary functions and broadcasting binary/variadic ops.

Element-wise ops do not care about layout, so they run in whatever format
their main input already has on the device; in channels-last a constant
operand shaped like ``[C, 1, 1]`` is rearranged on the host to broadcast
along the last (channel) axis. The kernel is chosen from the physical
shapes: same shape or a contiguous broadcast (scalar, per-channel,
per-row) uses ``binary_bcast`` with one modulo; anything else uses the
general ``binary_strided`` kernel. A fused activation (from the graph
passes) runs in the same kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..device import KernelBuildError
from ..graph import Node
from ..plan import Binding, Step, Unsupported, physical_shape
from ..programs import f32, i32
from .registry import Buf, act_args, kernel_step, nelem, prefer_fmt, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__ = ["BINARY_OPS", "UNARY_OPS", "binary", "unary"]

# op -> (unary id in apply_act, default params)
UNARY_OPS: dict[str, int] = {
    "Relu": 1, "Clip": 2, "Sigmoid": 3, "Tanh": 4, "LeakyRelu": 5, "HardSigmoid": 6, "HardSwish": 7,
    "Exp": 8, "Log": 9, "Sqrt": 10, "Neg": 11, "Abs": 12, "Reciprocal": 13, "Elu": 14, "Softplus": 15,
    "Erf": 16, "Gelu": 17, "Floor": 18, "Ceil": 19, "Sin": 20, "Cos": 21, "Selu": 22, "Softsign": 23,
    "Round": 24, "Sign": 25, "Mish": 27, "Celu": 29,
}  # fmt: skip
BINARY_OPS = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4, "Max": 5, "Min": 6, "PRelu": 7, "Mod": 11,
              "Sum": 0}  # fmt: skip
_SWAPPED = {0: 0, 1: 8, 2: 2, 3: 9, 4: 10, 5: 5, 6: 6, 11: None, 7: None}


def _unary_params(node: Node, pc: PlanContext) -> tuple[float, float]:
    op = node.op
    if op == "Clip":
        if "min" in node.attrs or "max" in node.attrs:
            return float(node.attr("min", -3.4e38)), float(node.attr("max", 3.4e38))
        lo = pc.const(node.input(1)) if node.input(1) else np.float32(-3.4e38)
        hi = pc.const(node.input(2)) if node.input(2) else np.float32(3.4e38)
        if lo is None or hi is None:
            raise Unsupported("Clip bounds are computed at run time")
        return float(lo), float(hi)
    if op == "LeakyRelu":
        return float(node.attr("alpha", 0.01)), 0.0
    if op == "HardSigmoid":
        return float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    if op == "Elu":
        return float(node.attr("alpha", 1.0)), 0.0
    if op == "Celu":
        return float(node.attr("alpha", 1.0)), 0.0
    if op == "Selu":
        alpha, gamma = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
        return float(alpha), float(gamma)
    if op == "Gelu" and node.attr("approximate", "none") != "none":
        raise Unsupported("Gelu with tanh approximation")
    return 0.0, 0.0


@register(*UNARY_OPS)
def unary(node: Node, pc: PlanContext) -> None:
    p0, p1 = _unary_params(node, pc)
    src = pc.device(node.input(0), prefer_fmt(pc, node.input(0)))
    val = pc.val(src)
    out = pc.define(node.outputs[0], val.shape, val.fmt)
    n = nelem(val.shape)
    kernel_step(pc, "elementwise", "unary", (n,),
                [Buf(src), i32(0), Buf(out), i32(0), i32(n), i32(UNARY_OPS[node.op]), f32(p0), f32(p1)],
                inputs=[src], outputs=[out])  # fmt: skip


def _rank_up(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)


def _contiguous_bcast(small: tuple[int, ...], full: tuple[int, ...]) -> tuple[int, int] | None:
    """(inner, bn) when ``small`` equals ``full`` on one contiguous run of axes and is 1 elsewhere."""
    axes = [i for i, (s, f) in enumerate(zip(small, full, strict=True)) if s != 1]
    if any(small[i] != full[i] for i in axes):
        return None
    if not axes:
        return (1, 1)
    lo, hi = axes[0], axes[-1] + 1
    if any(small[i] != full[i] for i in range(lo, hi)):
        return None
    return nelem(full[hi:]), nelem(full[lo:hi])


def _strides(shape: tuple[int, ...], full: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    strides = list(reversed(out))
    return [0 if d == 1 and f != 1 else s for d, f, s in zip(shape, full, strides, strict=True)]


def _operand(pc: PlanContext, name: str, rank: int, fmt: str) -> tuple[str, tuple[int, ...]]:
    """Device name and physical shape of an operand broadcast to ``rank`` in ``fmt``."""
    val = pc.val(name)
    logical = _rank_up(val.shape, rank)
    if fmt == "cl":
        if val.where == "const":
            assert val.const is not None
            arr = np.asarray(val.const, np.float32).reshape(logical)
            arr = np.moveaxis(arr, 1, -1)
            return pc.weight(f"cl:{name}", arr), arr.shape
        if len(val.shape) != rank:
            raise Unsupported("lower-rank run-time operand in channels-last")
        return pc.device(name, ("cl",)), physical_shape(logical, "cl")
    return pc.device(name, ("plain",)), logical


def binary(
    pc: PlanContext,
    a: str,
    b: str,
    out: str,
    op: int,
    activation: tuple[str, tuple[float, ...]],
    fmt: str | None = None,
) -> None:
    """Emit ``out = act(a <op> b)`` with numpy broadcasting; defines ``out``."""
    va, vb = pc.val(a), pc.val(b)
    if va.dtype != np.float32 or vb.dtype != np.float32:
        raise Unsupported("element-wise op on non-float tensors")
    try:
        shape = tuple(int(d) for d in np.broadcast_shapes(va.shape, vb.shape))
    except ValueError as exc:
        raise Unsupported(f"shapes {va.shape} and {vb.shape} do not broadcast") from exc
    rank = len(shape)
    if fmt is None:
        fmt = "plain"
        if rank in (3, 4):
            big = [v for v in (va, vb) if v.shape == shape and v.where != "const"]
            if big and any(prefer_fmt(pc, v.name)[0] == "cl" for v in big):
                fmt = "cl"
    da, pa = _operand(pc, a, rank, fmt)
    db, pb = _operand(pc, b, rank, fmt)
    pout = physical_shape(shape, fmt)
    dout = pc.define(out, shape, fmt)
    n = nelem(shape)
    act = act_args(activation)
    if pa != pout and pb == pout and _SWAPPED.get(op) is not None:
        da, db, pa, pb, op = db, da, pb, pa, _SWAPPED[op]  # type: ignore[assignment]
    simple = _contiguous_bcast(pb, pout) if pa == pout else None
    if simple is not None:
        inner, bn = simple
        kernel_step(pc, "elementwise", "binary_bcast", (n,),
                    [Buf(da), i32(0), Buf(db), i32(0), Buf(dout), i32(0), i32(n), i32(inner), i32(bn),
                     i32(op), *act], inputs=[da, db], outputs=[dout])  # fmt: skip
        return
    meta = pc.table([*pout, *_strides(pa, pout), *_strides(pb, pout)])
    kernel_step(pc, "elementwise", "binary_strided", (n,),
                [Buf(da), i32(0), Buf(db), i32(0), Buf(dout), i32(0), i32(n), i32(len(pout)), Buf(meta),
                 i32(op), *act], inputs=[da, db, meta], outputs=[dout])  # fmt: skip


@register(*BINARY_OPS)
def binary_op(node: Node, pc: PlanContext) -> None:
    op = BINARY_OPS[node.op]
    if node.op == "Mod" and not node.attr("fmod", 0):
        raise Unsupported("integer-style Mod (fmod=0)")
    names = [n for n in node.inputs if n]
    if len(names) == 1:
        src = pc.device(names[0], prefer_fmt(pc, names[0]))
        val = pc.val(src)
        out = pc.define(node.outputs[0], val.shape, val.fmt)
        n = nelem(val.shape)
        kernel_step(pc, "elementwise", "unary", (n,),
                    [Buf(src), i32(0), Buf(out), i32(0), i32(n), *act_args(node.activation)],
                    inputs=[src], outputs=[out])  # fmt: skip
        return
    if node.op == "PRelu":
        _prelu_check(pc, names)
    acc = names[0]
    for i, other in enumerate(names[1:], start=1):
        last = i == len(names) - 1
        target = node.outputs[0] if last else f"{node.outputs[0]}__part{i}"
        binary(pc, acc, other, target, op, node.activation if last else ("none", ()))
        acc = target


def _prelu_check(pc: PlanContext, names: list[str]) -> None:
    x, slope = pc.val(names[0]).shape, pc.val(names[1]).shape
    if tuple(np.broadcast_shapes(x, slope)) != tuple(x):
        raise Unsupported("PRelu slope broadcasts beyond the input")


def _literal(value: float) -> str:
    """An exact OpenCL C float literal."""
    if np.isnan(value):
        return "NAN"
    if np.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    return float(np.float32(value)).hex() + "f"


def chain_source(program: list[tuple[str, int, int, float, float]]) -> str:
    """Straight-line OpenCL C for a chain: constants inlined, so the compiler folds every switch."""
    lines = []
    for kind, op, off, p0, p1 in program:
        if kind == "unary":
            lines.append(f"    v = apply_act(v, {op}, {_literal(p0)}, {_literal(p1)});")
        elif kind == "scalar":
            lines.append(f"    v = apply_binary(v, {_literal(p0)}, {op});")
        elif kind == "channel":
            lines.append(f"    v = apply_binary(v, vecs[{off} + c], {op});")
        else:
            lines.append(f"    v = apply_binary(v, x0, {op});")
    body = "\n".join(lines)
    return f"""
__kernel void chain_fused(__global const float* x, __global float* y, int n, int inner, int channels,
                          __global const float* vecs) {{
    int i = get_global_id(0);
    if (i >= n) return;
    float x0 = x[i];
    float v = x0;
    int c = (i / inner) % channels;
{body}
    y[i] = v;
}}
"""


@register("ElementwiseChain")
def elementwise_chain(node: Node, pc: PlanContext) -> None:
    """One generated kernel for a fused chain of element-wise nodes (see :mod:`..fusion`)."""
    import hashlib

    x = node.input(0)
    shape = pc.shape(x)
    rank = len(shape)
    axes = {int(ins[3]) for ins in node.attr("program") if ins[0] == "channel"}
    axis = axes.pop() if axes else None
    program: list[tuple[str, int, int, float, float]] = []
    vecs: list[np.ndarray] = []
    offsets: dict[str, int] = {}
    for kind, op, operand, p0, p1 in node.attr("program"):
        off = 0
        if kind == "channel":
            assert axis is not None
            vec = np.asarray(pc.need_const(operand, "chain operand"), np.float32).reshape(-1)
            if vec.size not in (1, shape[axis]):
                raise Unsupported(f"chain operand {operand!r} does not broadcast along axis {axis} of {shape}")
            if vec.size == 1:
                kind, p0 = "scalar", float(vec[0])
            else:
                if operand not in offsets:
                    offsets[operand] = sum(v.size for v in vecs)
                    vecs.append(vec)
                off = offsets[operand]
        program.append((kind, int(op), off, float(p0), float(p1)))
    source = chain_source(program)
    key = hashlib.sha1(source.encode()).hexdigest()[:16]
    try:
        kern = pc.programs.custom_kernel("elementwise", key, source, "chain_fused")
    except KernelBuildError as exc:
        raise Unsupported(str(exc)) from exc
    src = pc.device(x, prefer_fmt(pc, x))
    val = pc.val(src)
    out = pc.define(node.outputs[0], shape, val.fmt)
    inner, channels = 1, 1
    if vecs and axis is not None:
        phys = physical_shape(shape, val.fmt)
        p_axis = axis if val.fmt == "plain" or axis == 0 else (rank - 1 if axis == 1 else axis - 1)
        inner, channels = nelem(phys[p_axis + 1 :]), phys[p_axis]
    vec_w = pc.weight(f"chainv:{node.name}", np.concatenate(vecs) if vecs else np.zeros(1, np.float32))
    n = nelem(shape)
    args = [Buf(src), Buf(out), i32(n), i32(inner), i32(channels), Buf(vec_w)]

    def bind(b: Binding) -> Any:
        resolved = [b.buf(a) if isinstance(a, Buf) else a for a in args]

        def run(_host: dict[str, np.ndarray]) -> None:
            b.programs.launch(kern, (n,), resolved)

        return run

    pc.emit(Step("opencl", "ElementwiseChain", [src, vec_w], [out], bind, nodes=list(node.sources)))
