"""Fixtures for the kernel tests: an OpenCL runtime per platform (PoCL, rusticl) and a one-node model runner.

Each op is exercised through the executor exactly as a model would use it: a
one-node ONNX model is written to a temporary file, loaded, planned and run, and
the test checks both the numbers (against numpy) and that the node really ran on
OpenCL (not on the onnxruntime fallback).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ocl_platforms import PLATFORMS, open_platform

_counter = itertools.count()


@pytest.fixture(scope="session", params=PLATFORMS)
def runtime(request: pytest.FixtureRequest) -> Any:
    from legacygpu.worker.opencl.executor import OpenCLRuntime

    return OpenCLRuntime(open_platform(request.param))


class NodeRunner:
    def __init__(self, runtime: Any, tmp: Path) -> None:
        self.runtime = runtime
        self.tmp = tmp

    def __call__(
        self,
        op: str,
        inputs: Mapping[str, np.ndarray],
        consts: Mapping[str, np.ndarray] | None = None,
        attrs: Mapping[str, Any] | None = None,
        *,
        order: Sequence[str] | None = None,
        outputs: Sequence[str] = ("y",),
        opset: int = 17,
        expect_opencl: bool = True,
    ) -> dict[str, np.ndarray]:
        from onnx import helper, numpy_helper

        consts = dict(consts or {})
        order = list(order) if order is not None else [*inputs, *consts]
        node = helper.make_node(op, order, list(outputs), name=f"{op}_under_test", **dict(attrs or {}))
        graph = helper.make_graph(
            [node], "t",
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
             for n, a in inputs.items()],
            [helper.make_tensor_value_info(o, 1, None) for o in outputs if o],
            initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in consts.items()],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        path = self.tmp / f"{op}_{next(_counter)}.onnx"
        path.write_bytes(model.SerializeToString())
        loaded = self.runtime.load(path)
        out = loaded.run(dict(inputs))
        plan = loaded.plan({n: a.shape for n, a in inputs.items()}).plan
        placements = {r.placement for r in plan.reports}
        if expect_opencl:
            assert placements == {"opencl"}, [(r.op, r.placement, r.reason) for r in plan.reports]
        self.last_plan = plan
        return out


@pytest.fixture()
def run_node(runtime: Any, tmp_path: Path) -> NodeRunner:
    return NodeRunner(runtime, tmp_path)
