"""The plan data model: values and steps.

A :class:`Plan` is built for one set of concrete input shapes (the executor
keeps one per batch size it has seen). It is a straight list of
:class:`Step` objects; each step reads and writes named values:

* ``host`` values live in numpy arrays (graph inputs, onnxruntime results),
* ``device`` values live in OpenCL buffers, in a *format*: ``plain``
  (row-major in the ONNX shape) or ``cl`` (channels-last: a rank-3/4 tensor
  whose logical shape is N,C,(H,)W stored as N,(H,)W,C, the layout every
  convolution and pooling kernel works in),
* ``const`` values are known when planning (weights, folded shapes); a
  device copy of one is a *weight*, uploaded once per model.

Op planners (:mod:`legacygpu.worker.opencl.ops`) get a
:class:`~legacygpu.worker.opencl.plancontext.PlanContext`:
they ask for their inputs on the device in the formats they accept
(:meth:`PlanContext.device`, which inserts uploads and layout conversions as
needed), declare their outputs (:meth:`PlanContext.define`), and emit a step
whose ``bind`` callback, given the plan's buffers, returns the function that
enqueues the kernels. An op planner raises :class:`Unsupported` when it
cannot run a node; the context then rolls back whatever it had inserted and
the node goes to onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .device import DeviceContext
    from .programs import Programs
    from .weights import WeightStore

__all__ = ["F32", "Binding", "NodeReport", "Plan", "Runner", "Step", "Unsupported", "Val", "physical_shape"]

log = logging.getLogger(__name__)

F32 = np.dtype(np.float32)
Runner = Callable[[dict[str, np.ndarray]], None]


class Unsupported(Exception):
    """Raised by an op planner: this node cannot run on OpenCL (the message says why)."""


def physical_shape(shape: Sequence[int], fmt: str) -> tuple[int, ...]:
    """The stored shape of a device value: channels-last moves axis 1 to the end."""
    shape = tuple(int(d) for d in shape)
    if fmt == "cl":
        return (shape[0], *shape[2:], shape[1])
    return shape


@dataclass
class Val:
    """A value of the plan."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    where: str  # 'host' | 'device' | 'const' | 'weight'
    fmt: str = "plain"
    const: np.ndarray | None = None
    alias_of: str | None = None
    origin: str = ""

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Step:
    """One unit of work; ``bind`` turns it into a runner once buffers exist."""

    kind: str  # 'opencl' | 'fallback' | 'upload' | 'download' | 'convert' | 'alias'
    label: str
    inputs: list[str]
    outputs: list[str]
    bind: Callable[[Binding], Runner] | None = None
    nodes: list[str] = field(default_factory=list)
    flops: float = 0.0
    scratch: list[str] = field(default_factory=list)
    onnx_nodes: list[Any] = field(default_factory=list)
    reason: str = ""
    feeds: dict[str, str] = field(default_factory=dict)
    """Fallback steps: ONNX input name -> plan value holding it on the host."""
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    """Fallback steps: constants the ONNX nodes read (initializers of the subgraph)."""


@dataclass
class NodeReport:
    """How one (possibly fused) node was planned, for ``model check``."""

    name: str
    op: str
    sources: list[str]
    placement: str  # 'opencl' | 'onnxruntime' | 'folded'
    flops: float
    reason: str = ""


class Binding:
    """The buffers of a plan instance: slot buffers, weights, and views on them."""

    def __init__(self, plan: Plan, buffers: list[Any], weights: WeightStore) -> None:
        self.plan = plan
        self.buffers = buffers
        self.weights = weights
        self.queue = plan.dctx.queue
        self.programs = plan.programs

    def root(self, name: str) -> Val:
        val = self.plan.values[name]
        while val.alias_of is not None:
            val = self.plan.values[val.alias_of]
        return val

    def buf(self, name: str) -> Any:
        val = self.root(name)
        if val.where == "weight":
            return self.weights.buffer(val.name)
        return self.buffers[self.plan.slot_of[val.name]]

    def packed(self, name: str) -> Any:
        """The :class:`~.gemm.PackedB` of a GEMM weight (packed on first use, shared by plans)."""
        return self.weights.packed(name, self.programs.launch_lock)

    def arr(self, name: str, shape: Sequence[int] | None = None, offset_elems: int = 0) -> Any:
        """A pyopencl Array view of a device value (physical shape unless ``shape`` is given)."""
        import pyopencl.array as cla

        val = self.plan.values[name]
        shape = tuple(shape) if shape is not None else physical_shape(val.shape, val.fmt)
        return cla.Array(self.queue, shape, np.float32, data=self.buf(name), offset=4 * offset_elems)


@dataclass
class Plan:
    """Everything needed to run a model for one set of input shapes."""

    dctx: DeviceContext
    programs: Programs
    input_shapes: dict[str, tuple[int, ...]]
    values: dict[str, Val] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reports: list[NodeReport] = field(default_factory=list)
    slot_of: dict[str, int] = field(default_factory=dict)
    slot_sizes: list[int] = field(default_factory=list)
    opsets: dict[str, int] = field(default_factory=dict)
    ir_version: int = 8

    @property
    def peak_bytes(self) -> int:
        return sum(self.slot_sizes)

    def flop_share(self) -> float:
        total = sum(r.flops for r in self.reports if r.placement != "folded")
        ocl = sum(r.flops for r in self.reports if r.placement == "opencl")
        return ocl / total if total > 0 else 1.0
