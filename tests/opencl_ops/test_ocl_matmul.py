"""MatMul and Gemm: the tuned SGEMM path (constant weights, fused bias/activation) and the batched kernel."""

from __future__ import annotations

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (1, 64, 10), (3, 7, 5), (17, 33, 65), (64, 128, 96),
                                           (5, 300, 1000), (2, 9, 129)])  # fmt: skip
def test_matmul_constant_weight(run_node, m: int, k: int, n: int) -> None:
    a, w = rand(m, k, seed=1), rand(k, n, seed=2)
    assert_close(run_node("MatMul", {"a": a}, {"w": w})["y"], a @ w, rtol=1e-4, atol=1e-5)


def test_matmul_batched_activation_times_weight(run_node) -> None:
    a, w = rand(2, 3, 7, 11, seed=3), rand(11, 6, seed=4)
    assert_close(run_node("MatMul", {"a": a}, {"w": w})["y"], a @ w)


@pytest.mark.parametrize(("sa", "sb"), [((4, 5), (5, 3)), ((2, 7, 9), (2, 9, 4)), ((3, 2, 5, 8), (3, 2, 8, 17)),
                                        ((1, 6, 3), (4, 3, 2)), ((2, 33, 17), (17, 19))])  # fmt: skip
def test_matmul_two_runtime_operands(run_node, sa, sb) -> None:
    a, b = rand(*sa, seed=5), rand(*sb, seed=6)
    assert_close(run_node("MatMul", {"a": a, "b": b})["y"], a @ b)


@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (13,), (1, 13), (9, 13), (9, 1)])
def test_gemm(run_node, trans_a: int, trans_b: int, c_shape) -> None:
    m, k, n = 9, 21, 13
    a = rand(*((k, m) if trans_a else (m, k)), seed=7)
    b = rand(*((n, k) if trans_b else (k, n)), seed=8)
    consts = {"b": b}
    if c_shape is not None:
        consts["c"] = rand(*c_shape, seed=9)
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": 0.5, "beta": 2.0}
    out = run_node("Gemm", {"a": a}, consts, attrs)
    want = 0.5 * ((a.T if trans_a else a) @ (b.T if trans_b else b))
    if c_shape is not None:
        want = want + 2.0 * consts["c"]
    assert_close(out["y"], want)


def test_gemm_with_runtime_b(run_node) -> None:
    a, b = rand(6, 10, seed=10), rand(8, 10, seed=11)
    out = run_node("Gemm", {"a": a, "b": b}, attrs={"transB": 1, "alpha": 1.5})
    assert_close(out["y"], 1.5 * a @ b.T)


def test_matmul_add_relu_fuses_into_one_gemm(tmp_path, runtime) -> None:
    from onnx import helper, numpy_helper

    w, bias = rand(16, 24, seed=12), rand(24, seed=13)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]  # fmt: skip
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", 1, ["batch", 16])],
                          [helper.make_tensor_value_info("y", 1, None)],
                          initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    path = tmp_path / "mlp.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    model = runtime.load(path)
    assert len(model.graph.nodes) == 1 and model.graph.nodes[0].bias is not None
    for batch in (1, 5, 32):
        x = rand(batch, 16, seed=batch)
        assert_close(model.run({"x": x})["y"], np.maximum(x @ w + bias, 0))
        steps = model.plan({"x": x.shape}).plan.steps
        labels = [s.label for s in steps if s.kind == "opencl"]
        assert labels == ["MatMul gemm"]  # bias and ReLU in the epilogue, no padding to trim
