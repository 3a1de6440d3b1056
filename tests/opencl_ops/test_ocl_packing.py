"""Constant GEMM weights are packed once per parameter set, shared by plans, freed with them.

The executor lays out each Conv/MatMul/Gemm weight with ``Gemm.pack_b`` on a
plan's first run and passes the ``PackedB`` on every later run. These tests
count the real ``pack_b`` calls (a counting wrapper around the runtime's own
method, which still does the work on PoCL) and compare with onnxruntime.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand


def _save(tmp: Path, name: str, nodes: list[Any], inputs: list[Any], inits: dict[str, np.ndarray]) -> Path:
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, name, inputs, [helper.make_tensor_value_info("y", 1, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])  # fmt: skip
    path = tmp / f"{name}.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def _reference(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]


@pytest.fixture()
def pack_calls(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Record (shape of B, parameters) of every ``pack_b`` call on the shared runtime's GEMM."""
    gemm = runtime.gemm
    real = gemm.pack_b
    calls: list[tuple[Any, Any]] = []

    def counting(b: Any, **kw: Any) -> Any:
        calls.append((tuple(b.shape), kw.get("params")))
        return real(b, **kw)

    monkeypatch.setattr(gemm, "pack_b", counting)
    return calls


def test_matmul_weight_packed_once_per_parameter_set(runtime: Any, tmp_path: Path, pack_calls: list) -> None:
    from onnx import helper

    k, n = 96, 70
    w, bias = rand(k, n, seed=21), rand(n, seed=22)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    path = _save(tmp_path, "mm", nodes, [helper.make_tensor_value_info("x", 1, ["batch", k])], {"w": w, "b": bias})
    model = runtime.load(path)
    batches = (1, 8, 20, 40)
    for _ in range(3):  # every batch size three times over
        for batch in batches:
            x = rand(batch, k, seed=batch)
            got = model.run({"x": x})["y"]
            assert_close(got, _reference(path, {"x": x}), rtol=1e-4, atol=1e-5)
            assert_close(got, x @ w + bias)
    expected = {runtime.gemm.params_for(b, n, k) for b in batches}  # batch sizes that share parameters share B
    assert len(pack_calls) == len(expected), pack_calls
    assert {p for _, p in pack_calls} == expected and all(s == (k, n) for s, _ in pack_calls)
    assert model.weights.packs == len(expected)
    assert len(model.weights.packed_names()) == len(expected)
    steps = [s.label for s in model.plan({"x": (8, k)}).plan.steps if s.kind == "opencl"]
    assert steps == ["MatMul gemm"]  # bias fused, no padding scratch or trim copy

    model.release()
    gc.collect()
    assert model.weights.packed_names() == []  # unloading frees the packed copies


def test_conv_and_transposed_gemm_weights_packed_once(runtime: Any, tmp_path: Path, pack_calls: list) -> None:
    from onnx import helper

    wc = rand(6, 3, 3, 3, seed=23, low=-0.5, high=0.5)
    wg = rand(5, 6 * 4 * 4, seed=24, low=-0.2, high=0.2)  # Gemm transB=1: stored (N, K)
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1),
    ]
    path = _save(tmp_path, "convnet", nodes, [helper.make_tensor_value_info("x", 1, [2, 3, 4, 4])],
                 {"wc": wc, "wg": wg})  # fmt: skip
    model = runtime.load(path)
    x = rand(2, 3, 4, 4, seed=25)
    want = _reference(path, {"x": x})
    for _ in range(4):
        assert_close(model.run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)
    plan = model.plan({"x": x.shape}).plan
    assert {r.placement for r in plan.reports} <= {"opencl", "folded"}
    assert sorted(s for s, _ in pack_calls) == [(5, 96), (27, 6)]  # each weight once; Gemm's B packed transposed
    assert model.weights.packs == 2


def test_evicted_plans_free_their_packed_weights(runtime: Any, tmp_path: Path, pack_calls: list) -> None:
    from onnx import helper

    from legacygpu.worker.opencl import executor

    k, n = 32, 24
    w = rand(k, n, seed=26)
    path = _save(tmp_path, "mm_lru", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", 1, ["batch", k])], {"w": w})  # fmt: skip
    model = runtime.load(path)
    x1 = rand(1, k, seed=1)
    model.run({"x": x1})
    gemv_names = model.weights.packed_names()
    assert len(gemv_names) == 1
    for batch in range(40, 40 + executor.MAX_PLANS):  # fills the plan cache; the batch-1 plan is dropped
        model.run({"x": rand(batch, k, seed=batch)})
    gc.collect()
    if runtime.gemm.params_for(1, n, k) != runtime.gemm.params_for(40, n, k):
        assert gemv_names[0] not in model.weights.packed_names()  # no plan holds it any more
    before = len(pack_calls)
    assert_close(model.run({"x": x1})["y"], x1 @ w)  # packed again for the re-built plan
    assert len(pack_calls) == before + (runtime.gemm.params_for(1, n, k) != runtime.gemm.params_for(40, n, k))


def test_dropping_a_model_frees_its_packed_weights(runtime: Any, tmp_path: Path) -> None:
    """The worker unloads a model by dropping it (no release call): the packed copies must go with it."""
    import weakref

    from onnx import helper

    k, n = 40, 30
    path = _save(tmp_path, "mm_drop", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", 1, [8, k])], {"w": rand(k, n, seed=27)})  # fmt: skip
    model = runtime.load(path)
    model.run({"x": rand(8, k, seed=28)})
    (name,) = model.weights.packed_names()
    packed = weakref.ref(model.weights.packed(name, runtime.programs.launch_lock))
    assert model.weights.packs == 1  # asking again packs nothing
    del model
    gc.collect()
    assert packed() is None
