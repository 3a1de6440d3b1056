"""The context op planners write into while a :class:`~.plan.Plan` is being built.

A :class:`PlanContext` is a transaction per node: :meth:`PlanContext.begin`
marks the plan, an op planner asks for its inputs on the device in the
formats it accepts (:meth:`PlanContext.device`, which inserts uploads and
layout conversions through :mod:`~.transfers`), declares its outputs
(:meth:`PlanContext.define`) and emits steps; if it raises
:class:`~.plan.Unsupported`, :meth:`PlanContext.rollback` removes whatever it
had inserted and the node goes to onnxruntime.

The data model (values, steps, bindings) is :mod:`~.plan`, which
:mod:`~.transfers` builds on as well; this module sits above both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from legacygpu.core.errors import ModelError

from . import transfers
from .device import KernelBuildError
from .plan import F32, Plan, Step, Unsupported, Val

if TYPE_CHECKING:
    from .graph import Graph, Node
    from .weights import GemmWeight, WeightStore

__all__ = ["PlanContext"]


class PlanContext:
    """What op planners see while a plan is being built."""

    def __init__(
        self, plan: Plan, graph: Graph, weights: WeightStore, gemm: Any, node: Node | None = None
    ) -> None:
        self.plan = plan
        self.graph = graph
        self.weights = weights
        self.gemm = gemm
        self.node = node
        self.programs = plan.programs
        self.dctx = plan.dctx
        self.versions: dict[tuple[str, str], str] = {}
        self._journal: list[str] | None = None
        self._steps_mark = 0
        self._versions_mark: dict[tuple[str, str], str] = {}
        self.opsets = graph.opsets

    # -- transactions --------------------------------------------------------

    def begin(self, node: Node) -> None:
        self.node = node
        self._journal = []
        self._steps_mark = len(self.plan.steps)
        self._versions_mark = dict(self.versions)

    def rollback(self) -> None:
        for name in self._journal or []:
            self.plan.values.pop(name, None)
        del self.plan.steps[self._steps_mark :]
        self.versions = self._versions_mark
        self._journal = None

    def commit(self) -> None:
        self._journal = None

    def add_value(self, val: Val) -> Val:
        if val.name in self.plan.values:
            raise ModelError(f"value {val.name!r} is defined twice")
        self.plan.values[val.name] = val
        if self._journal is not None:
            self._journal.append(val.name)
        return val

    # -- reading -------------------------------------------------------------

    @property
    def opset(self) -> int:
        return self.graph.opset

    def val(self, name: str) -> Val:
        return self.plan.values[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.plan.values[name].shape

    def const(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        return self.plan.values[name].const

    def need_const(self, name: str, what: str) -> np.ndarray:
        value = self.const(name)
        if value is None:
            raise Unsupported(f"{what} is computed at run time")
        return value

    def kernel(self, family: str, name: str) -> Any:
        try:
            return self.programs.kernel(family, name)
        except KernelBuildError as exc:
            raise Unsupported(str(exc)) from exc

    # -- placing values --------------------------------------------------------

    def device(self, name: str, fmts: Sequence[str] = ("plain",)) -> str:
        """The name of a device copy of ``name`` in one of ``fmts`` (inserting steps as needed)."""
        val = self.plan.values[name]
        if val.dtype != F32:
            raise Unsupported(f"input {name!r} is {val.dtype.name}; OpenCL kernels take float32")
        if val.where in ("device", "weight") and val.fmt in fmts:
            return name
        for fmt in fmts:
            found = self.versions.get((name, fmt))
            if found:
                return found
        if val.where == "const":
            assert val.const is not None
            return self.weight(f"const:{name}", val.const, val.shape)
        if val.where == "host":
            dev = self.versions.get((name, "plain")) or transfers.upload(self, name)
            self.versions[(name, "plain")] = dev
        else:
            dev = name
        if self.plan.values[dev].fmt in fmts:
            return dev
        out = transfers.convert(self, dev, fmts[0])
        self.versions[(name, fmts[0])] = out
        return out

    def host(self, name: str) -> str:
        """The name of a host copy of ``name`` (downloading from the device as needed)."""
        val = self.plan.values[name]
        if val.where in ("host", "const"):
            return name
        found = self.versions.get((name, "host"))
        if found:
            return found
        out = transfers.download(self, name)
        self.versions[(name, "host")] = out
        return out

    def define(self, name: str, shape: Sequence[int], fmt: str = "plain", alias_of: str | None = None) -> str:
        """Declare a float32 device output of the current node."""
        self.add_value(Val(name, tuple(int(d) for d in shape), F32, "device", fmt, alias_of=alias_of,
                           origin=self.node.name if self.node else ""))  # fmt: skip
        return name

    def weight(self, key: str, array: np.ndarray, shape: Sequence[int] | None = None) -> str:
        """A device copy of a constant array (uploaded once per model, shared by plans)."""
        name = f"w:{key}"
        arr = np.ascontiguousarray(array, dtype=np.float32)
        if name not in self.plan.values:
            self.weights.add(name, arr)
            self.plan.values[name] = Val(name, tuple(shape) if shape is not None else arr.shape, F32, "weight")
        return name

    def gemm_weight(self, key: str, spec: GemmWeight) -> str:
        """A constant GEMM operand, packed once for ``spec.params`` and shared by every plan using them."""
        tag = hashlib.sha1(repr(spec.params).encode()).hexdigest()[:10]
        name = f"w:{key}:B:{tag}"
        if name not in self.plan.values:
            self.weights.add_gemm(name, spec)
            self.plan.values[name] = Val(name, (spec.k, spec.n), F32, "weight")
        return name

    def table(self, ints: Sequence[int]) -> str:
        """A small int32 table on the device (kernel metadata), keyed by its content."""
        arr = np.asarray(list(ints), np.int32)
        key = hashlib.sha1(arr.tobytes()).hexdigest()[:16]
        return self.weight(f"table:{key}", arr.view(np.float32))

    def scratch(self, nelems: int, label: str = "scratch") -> str:
        name = f"scratch:{len(self.plan.values)}:{label}"
        self.add_value(Val(name, (int(nelems),), F32, "device", origin=label))
        return name

    def emit(self, step: Step) -> Step:
        self.plan.steps.append(step)
        return step
