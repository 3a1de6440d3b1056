"""The op-planner registry and the helpers every op module uses.

An op planner is ``fn(node, pc) -> None``: it reads shapes and constants
from the :class:`~legacygpu.worker.opencl.plan.PlanContext`, asks for its
inputs on the device, defines its outputs and emits steps; it raises
:class:`~legacygpu.worker.opencl.plan.Unsupported` for anything it cannot do.
:func:`kernel_step` covers the common case of one kernel launch whose
buffer arguments are plan values (wrapped in :class:`Buf`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..graph import ACTIVATION_IDS, Node
from ..plan import Binding, Step, Unsupported
from ..programs import f32, i32

if TYPE_CHECKING:
    from ..plancontext import PlanContext

__all__ = [
    "REGISTRY",
    "Buf",
    "act_args",
    "kernel_step",
    "norm_axis",
    "prefer_fmt",
    "register",
]

OpPlanner = Callable[[Node, "PlanContext"], None]
REGISTRY: dict[str, OpPlanner] = {}


def register(*ops: str) -> Callable[[OpPlanner], OpPlanner]:
    def deco(fn: OpPlanner) -> OpPlanner:
        for op in ops:
            REGISTRY[op] = fn
        return fn

    return deco


class Buf(str):
    """A kernel argument that is the buffer of the named plan value."""

    __slots__ = ()


def act_args(activation: tuple[str, tuple[float, ...]]) -> list[Any]:
    """(act id, p0, p1) kernel arguments for a fused activation."""
    kind, params = activation
    if kind not in ACTIVATION_IDS:
        raise Unsupported(f"activation {kind} has no kernel")
    p = (*params, 0.0, 0.0)
    return [i32(ACTIVATION_IDS[kind]), f32(p[0]), f32(p[1])]


def kernel_step(
    pc: PlanContext,
    family: str,
    kernel: str,
    global_size: Sequence[int],
    args: Sequence[Any],
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    local_size: Sequence[int] | None = None,
    label: str | None = None,
    scratch: Sequence[str] = (),
) -> Step:
    """Emit a step launching ``family.kernel`` once with ``args`` (Buf entries resolved at bind time)."""
    kern = pc.kernel(family, kernel)
    gsize = tuple(int(g) for g in global_size)
    lsize = tuple(local_size) if local_size is not None else None
    node = pc.node

    def bind(b: Binding) -> Callable[[dict[str, np.ndarray]], None]:
        resolved = [b.buf(a) if isinstance(a, Buf) else a for a in args]

        def run(_host: dict[str, np.ndarray]) -> None:
            b.programs.launch(kern, gsize, resolved, lsize)

        return run

    return pc.emit(
        Step("opencl", label or (node.op if node else kernel), list(inputs), list(outputs), bind,
             nodes=list(node.sources) if node else [], scratch=list(scratch))
    )  # fmt: skip


def norm_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def prefer_fmt(pc: PlanContext, name: str) -> tuple[str, ...]:
    """Formats to ask for: the one the value already has on the device first."""
    val = pc.val(name)
    if val.where == "device" and val.fmt == "cl":
        return ("cl", "plain")
    if pc.versions.get((name, "cl")) and not pc.versions.get((name, "plain")):
        return ("cl", "plain")
    return ("plain", "cl") if len(val.shape) in (3, 4) else ("plain",)


def nelem(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))
