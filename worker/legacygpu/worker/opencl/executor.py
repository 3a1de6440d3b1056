"""Running ONNX models on an OpenCL device.

:class:`OpenCLRuntime` is one device's shared machinery: the context and
queue, the executor's kernel programs and the tuned SGEMM. An
:class:`OpenCLModel` is one loaded model on it:

* loading reads and optimises the graph once (:mod:`.graph`, :mod:`.passes`);
* each distinct set of input shapes (in practice: each batch size) gets its
  own :class:`~.plan.Plan`, built on first use and cached (:data:`MAX_PLANS`
  per model within :data:`PLAN_MEMORY_SHARE` of the device's memory, least
  recently used dropped first, buffers released with it);
* a plan's buffers are allocated on its first run and reused by every later
  run; weights are uploaded once per model and shared by its plans.

Failures keep the process usable: a plan that needs more memory than the
device has is refused before anything is allocated (:func:`.memory.check`),
an OpenCL error while allocating or running becomes a
:class:`~legacygpu.core.errors.ModelError` naming the step and drops the
plan's buffers, and a fallback segment whose output shape turns out to
depend on the data sends that one call to onnxruntime whole.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError
from legacygpu.worker.backends.onnxruntime import InputSpec, validate_feeds

from .device import DeviceContext, KernelBuildError
from .graph import Graph, concrete_shapes, load_graph
from .passes import optimize
from .plan import Binding, Plan
from .planner import build_plan
from .programs import Programs
from .segments import ShapeChanged
from .weights import WeightStore, allocate

__all__ = ["BoundPlan", "OpenCLModel", "OpenCLRuntime"]

log = logging.getLogger(__name__)

MAX_PLANS = 8
"""Plans kept per model: one per input shape, in practice per batch size (a batcher whose preferred sizes are
the powers of two up to 64 meets seven). Fewer made the real-time path build a plan for nearly every batch."""
PLAN_MEMORY_SHARE = 0.5
"""The kept plans' buffers together stay within this share of the device's memory (the oldest plan goes first)."""


class OpenCLRuntime:
    """A device context with the executor's programs and the SGEMM, shared by models."""

    def __init__(self, dctx: DeviceContext, kernel_overrides: Mapping[str, str] | None = None) -> None:
        self.dctx = dctx
        self.programs = Programs(dctx, kernel_overrides)
        self.gemm: Any = None
        try:
            from .gemm import Gemm
            from .tuning import TuningCache

            self.gemm = Gemm(dctx, TuningCache.load_default())
        except (KernelBuildError, ImportError, OSError) as exc:  # GEMM unusable: convs fall back
            log.warning("SGEMM unavailable on %s: %s", dctx.info.name, exc)

    def load(self, path: Path, *, disabled_ops: frozenset[str] = frozenset()) -> OpenCLModel:
        return OpenCLModel(Path(path), self, disabled_ops=disabled_ops)


class BoundPlan:
    """A plan with its buffers: allocated on first run, reused afterwards."""

    def __init__(self, plan: Plan, weights: WeightStore) -> None:
        self.plan = plan
        self.weights = weights
        self._runners: list[tuple[str, Any]] | None = None
        self._buffers: list[Any] = []

    def _bind(self) -> list[tuple[str, Any]]:
        ctx = self.plan.dctx.ctx
        buffers = [allocate(ctx, size, f"plan buffer {i}") for i, size in enumerate(self.plan.slot_sizes)]
        self._buffers = buffers
        binding = Binding(self.plan, buffers, self.weights)
        runners = []
        for step in self.plan.steps:
            if step.bind is not None:
                runners.append((step.label, step.bind(binding)))
        return runners

    def release(self) -> None:
        self._runners = None
        self._buffers = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyopencl as cl

        current = "allocating buffers"
        try:
            if self._runners is None:
                self._runners = self._bind()
            host: dict[str, np.ndarray] = dict(feeds)
            for label, runner in self._runners:
                current = label
                runner(host)
            self.plan.dctx.queue.finish()
        except (cl.MemoryError, cl.Error) as exc:
            self.release()
            raise ModelError(f"OpenCL failed in step {current!r}: {exc}") from exc
        except ModelError:
            self.release()
            raise
        out = {}
        for name in self.plan.outputs:
            val = self.plan.values[name]
            out[name] = val.const.copy() if val.where == "const" and val.const is not None else host[name]
        return out


class OpenCLModel:
    """A model loaded for the OpenCL executor."""

    def __init__(self, path: Path, runtime: OpenCLRuntime, *, disabled_ops: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.runtime = runtime
        self.disabled_ops = disabled_ops
        graph = load_graph(path)
        try:
            self.graph: Graph = optimize(graph)
        except ModelError:
            raise
        except Exception as exc:  # a pass tripping over an unusual graph is a load error, clearly named
            raise ModelError(f"cannot prepare {path.name} for OpenCL: {type(exc).__name__}: {exc}") from exc
        self.inputs = [
            InputSpec(s.name, tuple(d if isinstance(d, int) and d > 0 else None for d in (s.shape or ())), s.dtype)
            for s in self.graph.inputs
        ]
        self.input_names = [s.name for s in self.inputs]
        self.output_names = [o.name for o in self.graph.outputs]
        self.weights = WeightStore(runtime.dctx)
        self._plans: OrderedDict[tuple[Any, ...], BoundPlan] = OrderedDict()
        self._lock = threading.Lock()
        self._reference: Any = None

    def default_shapes(self, dims: Mapping[str, int] | None = None) -> dict[str, tuple[int, ...]]:
        """Input shapes with dynamic dimensions set from ``dims`` (by name) or to 1."""
        return concrete_shapes(self.graph.inputs, dict(dims or {}))

    def plan(self, shapes: Mapping[str, tuple[int, ...]]) -> BoundPlan:
        key = tuple((n, tuple(shapes[n])) for n in self.input_names)
        with self._lock:
            bound = self._plans.get(key)
            if bound is not None:
                self._plans.move_to_end(key)
                return bound
            rt = self.runtime
            plan = build_plan(
                self.graph, {n: tuple(shapes[n]) for n in self.input_names}, dctx=rt.dctx, programs=rt.programs,
                weights=self.weights, gemm=rt.gemm, disabled_ops=self.disabled_ops,
            )  # fmt: skip
            bound = BoundPlan(plan, self.weights)
            self._plans[key] = bound
            budget = rt.dctx.info.global_mem_bytes * PLAN_MEMORY_SHARE
            while len(self._plans) > MAX_PLANS or (
                    len(self._plans) > 1 and budget and sum(b.plan.peak_bytes for b in self._plans.values()) > budget):
                _, old = self._plans.popitem(last=False)
                old.release()
            return bound

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = validate_feeds(self.inputs, feeds)
        bound = self.plan({n: a.shape for n, a in checked.items()})
        try:
            results = bound.run(checked)
        except ShapeChanged as exc:
            log.warning("%s: a fallback op produced an unplanned shape (%s); running this call on onnxruntime",
                        self.path.name, exc)  # fmt: skip
            return self._run_reference(checked)
        except ModelError:
            with self._lock:
                for key, value in list(self._plans.items()):
                    if value is bound:
                        del self._plans[key]
            raise
        return {o: results[p] for o, p in zip(self.output_names, bound.plan.outputs, strict=True)}

    def _run_reference(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._reference is None:
            from legacygpu.worker.backends.onnxruntime import OnnxRuntimeBackend

            self._reference = OnnxRuntimeBackend().load(self.path)
        return dict(self._reference.run(feeds))

    def release(self) -> None:
        with self._lock:
            for bound in self._plans.values():
                bound.release()
            self._plans.clear()
        self.weights.release()
