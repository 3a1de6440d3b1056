"""Gemm and MatMul: the tuned SGEMM for constant weights, a batched kernel otherwise.

:func:`gemm_call` is the one way the executor uses the project's SGEMM
(:class:`legacygpu.worker.opencl.gemm.Gemm`): activations (M, K) times a
constant (K, N) weight, with the bias and activation fused into the GEMM
epilogue. The kernel parameters are chosen when planning (the GEMM's
``params_for`` for that M, N, K) and the weight is registered for them
(:meth:`~legacygpu.worker.opencl.plan.PlanContext.gemm_weight`): the plan's
first run packs it with ``Gemm.pack_b`` and every later run, and every plan
that chose the same parameters, passes that :class:`~..gemm.PackedB`, so no
call copies a weight. The GEMM handles any N itself (masked stores, the
packing pads B where its layout needs it), so outputs are written in place
at their real width. Activations the GEMM epilogue lacks run as a separate
in-place element-wise step.

Products of two run-time tensors (attention scores) use the ``bmm`` kernel
with strided operands: transposes cost nothing and a batch of 1 broadcasts
with stride 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..device import KernelBuildError
from ..gemm import ACTIVATIONS, TRANSCENDENTAL
from ..graph import Node
from ..plan import Binding, Step, Unsupported
from ..programs import f32, i32
from ..weights import GemmWeight
from .registry import Buf, act_args, kernel_step, nelem, register

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__ = ["ConstB", "gemm_call"]

@dataclass(frozen=True)
class ConstB:
    """A constant GEMM operand ``op(B)``, K x N, whose host matrix is made only when it is packed.

    ``load`` returns the stored matrix: (K, N), or (N, K) with ``trans`` (a
    ``Gemm`` with ``transB``: the packing kernel transposes it). Make it a
    view of the graph's constant, or a reorder computed on demand, so that
    planning copies nothing.
    """

    k: int
    n: int
    load: Callable[[], np.ndarray]
    trans: bool = False

    @classmethod
    def of(cls, array: np.ndarray, trans: bool = False) -> ConstB:
        arr = np.asarray(array, np.float32)
        k, n = (arr.shape[1], arr.shape[0]) if trans else arr.shape
        return cls(int(k), int(n), lambda: arr, trans)


def gemm_call(
    pc: PlanContext,
    a: str,
    a_shape: tuple[int, int],
    bmat: ConstB,
    bias: np.ndarray | None,
    out: str,
    activation: tuple[str, tuple[float, ...]],
    *,
    key: str,
    out_offset: int = 0,
    inputs: Sequence[str] | None = None,
    trans_a: bool = False,
    alpha: float = 1.0,
    m_params: int | None = None,
) -> None:
    """Emit ``out[out_offset:] = act(alpha * op(a) @ op(bmat) + bias)`` with the tuned GEMM.

    ``a_shape`` is the stored shape of ``a`` ((M, K), or (K, M) with ``trans_a``).
    The kernel parameters are those for M = ``m_params`` (default: this call's
    M; a convolution done in row blocks passes its whole M so that every block
    shares one packed weight).
    """
    gemm = pc.gemm
    if gemm is None:
        raise Unsupported("the GEMM kernels are unavailable on this device")
    m, k = (a_shape[1], a_shape[0]) if trans_a else a_shape
    n = bmat.n
    if bmat.k != k:
        raise Unsupported(f"GEMM shapes {a_shape} and {(bmat.k, n)} do not match")
    kind, params = activation
    fused = kind if kind in ACTIVATIONS else None
    epilogue = fused or "none"
    try:
        gparams = gemm.params_for(m_params or m, n, k)
        # build now: a driver that cannot compile it sends the node to onnxruntime
        gemm.kernel(gparams, trans=epilogue in TRANSCENDENTAL, edge=n % gparams.vw != 0)
    except KernelBuildError as exc:
        raise Unsupported(str(exc)) from exc
    w = pc.gemm_weight(key, GemmWeight(bmat.load, k, n, bmat.trans, gparams, gemm))
    bias_w = pc.weight(f"{key}:bias", bias) if bias is not None else None
    act_params = tuple(params) if kind in ("clip", "leaky_relu") else ()
    reads = [*(inputs or [a]), w, *([bias_w] if bias_w else [])]

    def bind(b: Binding) -> Any:
        a_arr = b.arr(a, a_shape)
        packed = b.packed(w)  # packed once, on the first run of the first plan that uses these parameters
        bias_arr = b.arr(bias_w, (n,)) if bias_w else None
        out_arr = b.arr(out, (m, n), offset_elems=out_offset)
        lock = b.programs.launch_lock

        def run(_host: dict[str, np.ndarray]) -> None:
            with lock:
                gemm.run(packed.params, a_arr, packed, bias=bias_arr, activation=epilogue, alpha=alpha,
                         trans_a=trans_a, out=out_arr, activation_params=act_params)  # fmt: skip

        return run

    node = pc.node
    pc.emit(Step("opencl", f"{node.op if node else 'gemm'} gemm", reads, [out], bind,
                 nodes=list(node.sources) if node else []))  # fmt: skip
    if fused is None:
        total = m * n
        kernel_step(pc, "elementwise", "unary", (total,),
                    [Buf(out), i32(out_offset), Buf(out), i32(out_offset), i32(total), *act_args(activation)],
                    inputs=[out], outputs=[out], label="gemm activation")  # fmt: skip


def _bmm(pc: PlanContext, node: Node, a: str, b: str, out_name: str, trans_a: bool, trans_b: bool,
         alpha: float) -> tuple[int, ...]:  # fmt: skip
    sa, sb = pc.shape(a), pc.shape(b)
    if len(sa) < 2 or len(sb) < 2:
        raise Unsupported("batched MatMul of vectors")
    m, k = (sa[-1], sa[-2]) if trans_a else (sa[-2], sa[-1])
    k2, n = (sb[-1], sb[-2]) if trans_b else (sb[-2], sb[-1])
    if k != k2:
        raise Unsupported(f"MatMul shapes {sa} and {sb} do not match")
    try:
        batch = tuple(int(d) for d in np.broadcast_shapes(sa[:-2], sb[:-2]))
    except ValueError as exc:
        raise Unsupported("MatMul batch dimensions do not broadcast") from exc
    nb = nelem(batch)
    strides = []
    for shape in (sa, sb):
        if nelem(shape[:-2]) == nb:
            strides.append(shape[-2] * shape[-1])
        elif nelem(shape[:-2]) == 1:
            strides.append(0)
        else:
            raise Unsupported("partially broadcast MatMul batch")
    da, db = pc.device(a, ("plain",)), pc.device(b, ("plain",))
    out = pc.define(out_name, (*batch, m, n))
    a_rs, a_cs = (1, m) if trans_a else (k, 1)
    b_rs, b_cs = (1, k) if trans_b else (n, 1)
    ts = 16
    kernel_step(pc, "matmul", "bmm", (-(-n // ts) * ts, -(-m // ts) * ts, nb),
                [Buf(da), Buf(db), Buf(out), i32(m), i32(n), i32(k), i32(strides[0]), i32(a_rs), i32(a_cs),
                 i32(strides[1]), i32(b_rs), i32(b_cs), f32(alpha)],
                inputs=[da, db], outputs=[out], local_size=(ts, ts, 1), label=f"{node.op} bmm")  # fmt: skip
    return (*batch, m, n)


def _epilogue(pc: PlanContext, node: Node, out: str, shape: tuple[int, ...]) -> None:
    """Bias and activation as separate steps (for the bmm path)."""
    from .elementwise import binary

    cur = out
    if node.bias is not None:
        nxt = f"{node.outputs[0]}__biased" if node.activation[0] != "none" else node.outputs[0]
        binary(pc, cur, node.bias, nxt, 0, ("none", ()), fmt="plain")
        cur = nxt
    if node.activation[0] != "none":
        total = nelem(shape)
        dst = pc.define(node.outputs[0], shape)
        kernel_step(pc, "elementwise", "unary", (total,),
                    [Buf(cur), i32(0), Buf(dst), i32(0), i32(total), *act_args(node.activation)],
                    inputs=[cur], outputs=[dst])  # fmt: skip


@register("MatMul")
def matmul(node: Node, pc: PlanContext) -> None:
    a, b = node.input(0), node.input(1)
    wb = pc.const(b)
    sa = pc.shape(a)
    if wb is not None and wb.ndim in (1, 2) and pc.const(a) is None and len(sa) >= 1:
        bmat = np.asarray(wb, np.float32)
        bmat2 = bmat[:, None] if bmat.ndim == 1 else bmat
        k = sa[-1]
        m = nelem(sa[:-1])
        out_shape = (*sa[:-1], bmat2.shape[1]) if bmat.ndim == 2 else tuple(sa[:-1])
        src = pc.device(a, ("plain",))
        out = pc.define(node.outputs[0], out_shape)
        bias = np.asarray(pc.const(node.bias), np.float32) if node.bias is not None else None
        gemm_call(pc, src, (m, k), ConstB.of(bmat2), bias, out, node.activation, key=f"mm:{node.name}")
        return
    needs_epilogue = node.bias is not None or node.activation[0] != "none"
    target = f"{node.outputs[0]}__mm" if needs_epilogue else node.outputs[0]
    shape = _bmm(pc, node, a, b, target, False, False, 1.0)
    if needs_epilogue:
        _epilogue(pc, node, target, shape)


@register("Gemm")
def gemm_op(node: Node, pc: PlanContext) -> None:
    a, b, c = node.input(0), node.input(1), node.input(2)
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    sa = pc.shape(a)
    wb = pc.const(b)
    m = sa[1] if trans_a else sa[0]
    has_c = bool(c) and beta != 0.0
    if wb is not None and pc.const(a) is None:
        if wb.ndim != 2:
            raise Unsupported(f"Gemm weight of rank {wb.ndim}")
        bmat = ConstB.of(wb, trans=trans_b)  # transposed by the packing kernel, not on the host
        n = bmat.n
        bias = np.asarray(pc.const(node.bias), np.float32) if node.bias is not None else None
        cval = pc.const(c) if has_c else None
        if has_c and cval is not None and cval.size in (1, n) and (cval.ndim < 2 or cval.shape[0] == 1):
            extra = np.broadcast_to(np.asarray(cval, np.float32).reshape(-1), (n,)) * beta
            bias = extra if bias is None else bias + extra
            has_c = False
        src = pc.device(a, ("plain",))
        if has_c:
            mid = pc.define(f"{node.outputs[0]}__gemm", (m, n))
            gemm_call(pc, src, (sa[0], sa[1]), bmat, bias, mid, ("none", ()), key=f"gemm:{node.name}", trans_a=trans_a,
                      alpha=alpha)  # fmt: skip
            _add_c(pc, node, mid, (m, n), c, beta)
            return
        out = pc.define(node.outputs[0], (m, n))
        gemm_call(pc, src, (sa[0], sa[1]), bmat, bias, out, node.activation, key=f"gemm:{node.name}", trans_a=trans_a,
                  alpha=alpha)  # fmt: skip
        return
    plain = not has_c and node.bias is None and node.activation[0] == "none"
    target = node.outputs[0] if plain else f"{node.outputs[0]}__mm"
    shape = _bmm(pc, node, a, b, target, trans_a, trans_b, alpha)
    if plain:
        return
    if has_c:
        _add_c(pc, node, target, shape, c, beta)
    else:
        _epilogue(pc, node, target, shape)


def _add_c(pc: PlanContext, node: Node, mid: str, shape: tuple[int, ...], c: str, beta: float) -> None:
    from .elementwise import binary

    cval = pc.const(c)
    if cval is not None:
        scaled = f"{node.name}__c_scaled"
        pc.plan.values.setdefault(scaled, type(pc.val(c))(scaled, cval.shape, np.dtype(np.float32), "const",
                                                          const=np.asarray(cval, np.float32) * beta))  # fmt: skip
        c = scaled
    elif beta != 1.0:
        raise Unsupported("Gemm with a run-time C and beta != 1")
    if node.activation[0] == "none" and node.bias is None:
        binary(pc, mid, c, node.outputs[0], 0, ("none", ()), fmt="plain")
        return
    if node.bias is not None:
        raise Unsupported("Gemm with both a fused bias and a C input")
    binary(pc, mid, c, node.outputs[0], 0, node.activation, fmt="plain")

