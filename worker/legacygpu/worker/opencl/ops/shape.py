"""Shape and data-movement ops.

Reshapes (``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``) and no-ops
(``Identity``, ``Dropout``, a float-to-float ``Cast``) are aliases: the
output is the input's buffer under a new shape, no kernel runs.

``Transpose`` is a strided copy, except the two permutations that only
relabel channels-last data: NHWC->NCHW (0,3,1,2) of a plain tensor is the
same bytes as the result in channels-last format, and NCHW->NHWC (0,2,3,1)
of a channels-last tensor is the same bytes as the plain result, so the
TensorFlow-style Transpose/Conv/Transpose sandwiches cost nothing.

``Slice``, ``Expand`` and ``Tile`` are strided copies too (Tile as a copy
over interleaved (repeat, dim) axes with stride 0 on the repeats);
``Concat``/``Split`` are block copies (on the channel axis of
channels-last data they copy column blocks); ``Gather`` with constant
indices and ``Pad`` (constant, edge, reflect) have their own kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..graph import Node
from ..plan import Step, Unsupported, physical_shape
from ..programs import f32, i32
from ..transfers import strided_copy_step
from .registry import Buf, kernel_step, nelem, norm_axis, prefer_fmt, register

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..plancontext import PlanContext

__all__: list[str] = []


def _alias(pc: PlanContext, src: str, out_name: str, shape: tuple[int, ...], fmt: str = "plain") -> None:
    out = pc.define(out_name, shape, fmt, alias_of=src)
    pc.emit(Step("alias", pc.node.op if pc.node else "alias", [src], [out], nodes=list(pc.node.sources)))


def _ints(pc: PlanContext, node: Node, idx: int, attr: str) -> list[int] | None:
    if node.input(idx):
        return [int(v) for v in np.asarray(pc.need_const(node.input(idx), f"{node.op} {attr}")).ravel()]
    value = node.attr(attr)
    return None if value is None else [int(v) for v in value]


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return list(reversed(out))


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    if node.op == "Reshape":
        target = _ints(pc, node, 1, "shape") or []
        if not node.attr("allowzero", 0):
            target = [shape[i] if t == 0 else t for i, t in enumerate(target)]
        if -1 in target:
            known = nelem([t for t in target if t != -1])
            target[target.index(-1)] = nelem(shape) // max(known, 1)
        out_shape = tuple(target)
    elif node.op == "Flatten":
        axis = norm_axis(node.attr("axis", 1), len(shape) + 1) if shape else 0
        out_shape = (nelem(shape[:axis]), nelem(shape[axis:]))
    elif node.op == "Squeeze":
        axes = _ints(pc, node, 1, "axes")
        if axes is None:
            out_shape = tuple(d for d in shape if d != 1)
        else:
            drop = {norm_axis(a, len(shape)) for a in axes}
            out_shape = tuple(d for i, d in enumerate(shape) if i not in drop)
    else:
        axes = _ints(pc, node, 1, "axes") or []
        rank = len(shape) + len(axes)
        dims = list(shape)
        for a in sorted(norm_axis(a, rank) for a in axes):
            dims.insert(a, 1)
        out_shape = tuple(dims)
    if nelem(out_shape) != nelem(shape):
        raise Unsupported(f"{node.op} from {shape} to {out_shape} changes the element count")
    src = pc.device(x, ("plain",))
    _alias(pc, src, node.outputs[0], out_shape)


@register("Identity", "Dropout", "Cast")
def passthrough(node: Node, pc: PlanContext) -> None:
    if node.op == "Cast" and node.attr("to") != 1:
        raise Unsupported("Cast to a non-float type")
    if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
        raise Unsupported("Dropout mask output is used")
    x = node.input(0)
    src = pc.device(x, prefer_fmt(pc, x))
    val = pc.val(src)
    _alias(pc, src, node.outputs[0], val.shape, val.fmt)


@register("Transpose")
def transpose(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    rank = len(shape)
    perm = list(node.attr("perm") or reversed(range(rank)))
    out_shape = tuple(shape[p] for p in perm)
    to_cl = [0, rank - 1, *range(1, rank - 1)]
    to_plain = [0, *range(2, rank), 1]
    if rank in (3, 4) and perm == to_plain and prefer_fmt(pc, x)[0] == "cl":
        src = pc.device(x, ("cl",))
        _alias(pc, src, node.outputs[0], out_shape, "plain")
        return
    src = pc.device(x, ("plain",))
    if rank in (3, 4) and perm == to_cl:
        _alias(pc, src, node.outputs[0], out_shape, "cl")
        return
    out = pc.define(node.outputs[0], out_shape)
    strides = _strides(shape)
    strided_copy_step(pc, src, out, list(out_shape), [strides[p] for p in perm], 0, "Transpose",
                      nodes=list(node.sources))  # fmt: skip


def _blocks(shape: Sequence[int], axis: int, fmt: str) -> tuple[int, int, int]:
    """How Concat/Split see a tensor: ``outer`` blocks of ``big`` elements, ``inner`` per step along ``axis``.

    In the channel-last ``cl`` layout the channel axis is physically the last one.
    """
    phys = physical_shape(shape, fmt)
    p_axis = len(shape) - 1 if fmt == "cl" else axis
    inner = nelem(phys[p_axis + 1 :])
    return nelem(phys[:p_axis]), inner, phys[p_axis] * inner


@register("Concat")
def concat(node: Node, pc: PlanContext) -> None:
    names = [n for n in node.inputs if n]
    shapes = [pc.shape(n) for n in names]
    rank = len(shapes[0])
    axis = norm_axis(node.attr("axis", 1), rank)
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    use_cl = rank in (3, 4) and axis == 1 and any(prefer_fmt(pc, n)[0] == "cl" for n in names)
    fmt = "cl" if use_cl else "plain"
    srcs = [pc.device(n, (fmt,)) for n in names]
    out = pc.define(node.outputs[0], out_shape, fmt)
    outer, inner, big = _blocks(out_shape, axis, fmt)
    offset = 0
    for src, shape in zip(srcs, shapes, strict=True):
        cols = shape[axis] * inner
        kernel_step(pc, "shape", "copy_block", (cols, outer),
                    [Buf(src), i32(0), Buf(out), i32(0), i32(outer), i32(cols), i32(big), i32(offset), i32(0)],
                    inputs=[src], outputs=[out])  # fmt: skip
        offset += cols


@register("Split")
def split(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    rank = len(shape)
    axis = norm_axis(node.attr("axis", 0), rank)
    outs = [o for o in node.outputs]
    sizes = _ints(pc, node, 1, "split")
    if sizes is None:
        parts = len(outs)
        chunk = -(-shape[axis] // parts)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(parts)]
    if len(sizes) != len(outs) or sum(sizes) != shape[axis]:
        raise Unsupported(f"Split sizes {sizes} do not match axis length {shape[axis]}")
    use_cl = rank in (3, 4) and axis == 1 and prefer_fmt(pc, x)[0] == "cl"
    fmt = "cl" if use_cl else "plain"
    src = pc.device(x, (fmt,))
    outer, inner, big = _blocks(shape, axis, fmt)
    offset = 0
    for name, size in zip(outs, sizes, strict=True):
        out_shape = list(shape)
        out_shape[axis] = size
        cols = size * inner
        if name:
            out = pc.define(name, out_shape, fmt)
            kernel_step(pc, "shape", "copy_block", (cols, outer),
                        [Buf(src), i32(0), Buf(out), i32(0), i32(outer), i32(cols), i32(big), i32(offset), i32(1)],
                        inputs=[src], outputs=[out])  # fmt: skip
        offset += cols


def _slice_params(pc: PlanContext, node: Node, shape: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """Per-axis (start, step, length) of a Slice."""
    rank = len(shape)
    if pc.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes, steps = node.attr("axes"), None
    else:
        starts, ends = _ints(pc, node, 1, "starts") or [], _ints(pc, node, 2, "ends") or []
        axes, steps = _ints(pc, node, 3, "axes"), _ints(pc, node, 4, "steps")
    axes = [norm_axis(a, rank) for a in (axes if axes is not None else range(len(starts)))]
    steps = steps or [1] * len(axes)
    start, step, length = [0] * rank, [1] * rank, list(shape)
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        if st == 0:
            raise Unsupported("Slice step 0")
        idx = range(shape[a])[slice(s, e, st)]
        start[a], step[a], length[a] = (idx.start if len(idx) else 0), st, len(idx)
    return start, step, length


@register("Slice")
def slice_op(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    start, step, length = _slice_params(pc, node, shape)
    src = pc.device(x, ("plain",))
    out = pc.define(node.outputs[0], length)
    strides = _strides(shape)
    offset = sum(s * st for s, st in zip(start, strides, strict=True))
    strided_copy_step(pc, src, out, length, [st * sp for st, sp in zip(strides, step, strict=True)], offset,
                      "Slice", nodes=list(node.sources))  # fmt: skip


@register("Expand")
def expand(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    target = _ints(pc, node, 1, "shape") or []
    out_shape = tuple(int(d) for d in np.broadcast_shapes(shape, tuple(target)))
    src = pc.device(x, ("plain",))
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    strides = [0 if d == 1 and o != 1 else s for d, o, s in zip(padded, out_shape, _strides(padded), strict=True)]
    out = pc.define(node.outputs[0], out_shape)
    strided_copy_step(pc, src, out, list(out_shape), strides, 0, "Expand", nodes=list(node.sources))


@register("Tile")
def tile(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    reps = _ints(pc, node, 1, "repeats") or []
    if len(reps) != len(shape):
        raise Unsupported("Tile repeats do not match the rank")
    src = pc.device(x, ("plain",))
    dims, strides = [], []
    for d, r, s in zip(shape, reps, _strides(shape), strict=True):
        dims += [r, d]
        strides += [0, s]
    out = pc.define(node.outputs[0], [d * r for d, r in zip(shape, reps, strict=True)])
    strided_copy_step(pc, src, out, dims, strides, 0, "Tile", nodes=list(node.sources))


@register("Gather")
def gather(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    idx = np.asarray(pc.need_const(node.input(1), "Gather indices"), np.int64)
    axis = norm_axis(node.attr("axis", 0), len(shape))
    flat = np.where(idx < 0, idx + shape[axis], idx).ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= shape[axis]):
        raise Unsupported("Gather index out of range")
    src = pc.device(x, ("plain",))
    out_shape = (*shape[:axis], *idx.shape, *shape[axis + 1 :])
    out = pc.define(node.outputs[0], out_shape)
    table = pc.table(flat.tolist() or [0])
    outer, inner = nelem(shape[:axis]), nelem(shape[axis + 1 :])
    total = outer * flat.size * inner
    kernel_step(pc, "shape", "gather", (total,),
                [Buf(src), Buf(table), Buf(out), i32(outer), i32(shape[axis]), i32(flat.size), i32(inner)],
                inputs=[src, table], outputs=[out])  # fmt: skip


@register("Pad")
def pad(node: Node, pc: PlanContext) -> None:
    x = node.input(0)
    shape = pc.shape(x)
    rank = len(shape)
    pads = list(node.attr("pads")) if pc.opset < 11 else (_ints(pc, node, 1, "pads") or [])
    value = float(node.attr("value", 0.0)) if pc.opset < 11 else 0.0
    if pc.opset >= 11 and node.input(2):
        value = float(np.asarray(pc.need_const(node.input(2), "Pad value")).ravel()[0])
    if pc.opset >= 18 and node.input(3):
        axes = [norm_axis(a, rank) for a in _ints(pc, node, 3, "axes") or []]
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            full[a], full[rank + a] = pads[i], pads[len(axes) + i]
        pads = full
    mode = {"constant": 0, "edge": 1, "reflect": 2}.get(node.attr("mode", "constant"))
    if mode is None or len(pads) != 2 * rank or min(pads) < 0:
        raise Unsupported(f"Pad mode {node.attr('mode')} or negative pads")
    begin, end = pads[:rank], pads[rank:]
    out_shape = [d + b + e for d, b, e in zip(shape, begin, end, strict=True)]
    src = pc.device(x, ("plain",))
    out = pc.define(node.outputs[0], out_shape)
    meta = pc.table([*out_shape, *shape, *begin])
    n = nelem(out_shape)
    kernel_step(pc, "shape", "pad", (n,), [Buf(src), Buf(out), i32(n), i32(rank), Buf(meta), i32(mode), f32(value)],
                inputs=[src, meta], outputs=[out])  # fmt: skip
