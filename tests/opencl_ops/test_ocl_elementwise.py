"""Element-wise kernels against numpy: unary functions, broadcasting binary ops, fused epilogues."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand

_erf = np.vectorize(math.erf)

UNARY = {
    "Relu": lambda x: np.maximum(x, 0),
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "Tanh": np.tanh,
    "Exp": np.exp,
    "Neg": np.negative,
    "Abs": np.abs,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Sin": np.sin,
    "Cos": np.cos,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": lambda x: np.log1p(np.exp(x)),
    "Erf": _erf,
    "Sign": np.sign,
    "HardSwish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
}


@pytest.mark.parametrize("op", sorted(UNARY))
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 17, 9)])
def test_unary(run_node, op: str, shape: tuple[int, ...]) -> None:
    x = rand(*shape, seed=len(shape), low=-3, high=3)
    out = run_node(op, {"x": x})
    assert_close(out["y"], UNARY[op](x.astype(np.float64)).astype(np.float32), rtol=1e-4, atol=1e-5)


def test_positive_domain_unary(run_node) -> None:
    x = rand(4, 33, low=0.1, high=5.0)
    assert_close(run_node("Log", {"x": x})["y"], np.log(x))
    assert_close(run_node("Sqrt", {"x": x})["y"], np.sqrt(x))
    assert_close(run_node("Reciprocal", {"x": x})["y"], 1 / x)


@pytest.mark.parametrize(
    ("op", "attrs", "ref"),
    [
        ("LeakyRelu", {"alpha": 0.2}, lambda x: np.where(x >= 0, x, 0.2 * x)),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
        ("Elu", {"alpha": 0.7}, lambda x: np.where(x >= 0, x, 0.7 * (np.exp(x) - 1))),
        ("Selu", {}, lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * (np.exp(x) - 1))),
        ("Celu", {"alpha": 2.0}, lambda x: np.maximum(x, 0) + np.minimum(0, 2.0 * (np.exp(x / 2.0) - 1))),
    ],
)
def test_unary_with_attributes(run_node, op: str, attrs: dict, ref) -> None:
    x = rand(3, 41, low=-4, high=4)
    assert_close(run_node(op, {"x": x}, attrs=attrs)["y"], ref(x.astype(np.float64)).astype(np.float32))


def test_clip_bounds_from_inputs_and_attributes(run_node) -> None:
    x = rand(5, 13, low=-8, high=8)
    lo, hi = np.array(-1.5, np.float32), np.array(2.5, np.float32)
    assert_close(run_node("Clip", {"x": x}, {"lo": lo, "hi": hi})["y"], np.clip(x, -1.5, 2.5))
    assert_close(run_node("Clip", {"x": x}, attrs={"min": 0.0, "max": 6.0}, opset=6)["y"], np.clip(x, 0, 6))
    only_min = run_node("Clip", {"x": x}, {"lo": lo}, order=["x", "lo"])["y"]
    assert_close(only_min, np.maximum(x, -1.5))


BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
}

SHAPE_PAIRS = [
    ((4, 5), (4, 5)),
    ((2, 3, 7, 5), (3, 1, 1)),  # per-channel constant
    ((2, 3, 7, 5), (1, 3, 1, 1)),
    ((6, 11), (11,)),  # trailing row
    ((6, 11), ()),  # scalar
    ((6, 1), (1, 9)),  # outer product style: both broadcast
    ((3,), (2, 4, 3)),  # first operand broadcast
    ((2, 1, 5), (1, 4, 1)),
    ((2, 3, 4, 5), (3, 4, 1)),  # middle block
]


@pytest.mark.parametrize("op", sorted(BINARY))
@pytest.mark.parametrize(("sa", "sb"), SHAPE_PAIRS)
def test_binary_broadcast_runtime_operands(run_node, op: str, sa: tuple, sb: tuple) -> None:
    a = rand(*sa, seed=1, low=0.5, high=2.0)
    b = rand(*sb, seed=2, low=0.5, high=2.0) if sb else np.array(1.25, np.float32)
    out = run_node(op, {"a": a, "b": b})
    assert_close(out["y"], BINARY[op](a, b))


@pytest.mark.parametrize(("sa", "sb"), SHAPE_PAIRS)
def test_binary_with_constant_operand(run_node, sa: tuple, sb: tuple) -> None:
    a = rand(*sa, seed=3)
    b = rand(*sb, seed=4, low=0.5, high=2.0) if sb else np.array(0.5, np.float32)
    assert_close(run_node("Div", {"a": a}, {"b": b})["y"], a / b)
    assert_close(run_node("Sub", {"a": a}, {"b": b}, order=["b", "a"])["y"], b - a)


def test_pow_prelu_and_variadic_sum(run_node) -> None:
    a = rand(3, 4, 5, low=0.5, high=2.0)
    e = rand(4, 5, seed=9, low=-2, high=2)
    assert_close(run_node("Pow", {"a": a, "e": e})["y"], np.power(a, e), rtol=1e-4)
    x = rand(2, 3, 4, 4, low=-2, high=2)
    slope = rand(3, 1, 1, seed=5, low=0.1, high=0.5)
    assert_close(run_node("PRelu", {"x": x}, {"s": slope})["y"], np.where(x < 0, x * slope, x))
    parts = {f"x{i}": rand(2, 7, seed=10 + i) for i in range(4)}
    assert_close(run_node("Sum", parts)["y"], sum(parts.values()))
    assert_close(run_node("Max", parts)["y"], np.maximum.reduce(list(parts.values())))


def test_fused_add_relu_from_a_two_node_model(tmp_path, runtime) -> None:
    """Add followed by Relu becomes one node with an activation epilogue; values stay right."""
    from onnx import helper

    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(n, 1, [3, 8]) for n in "ab"],
                          [helper.make_tensor_value_info("y", 1, None)])  # fmt: skip
    path = tmp_path / "addrelu.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    model = runtime.load(path)
    assert [n.op for n in model.graph.nodes] == ["Add"] and model.graph.nodes[0].activation[0] == "relu"
    a, b = rand(3, 8, seed=1), rand(3, 8, seed=2)
    assert_close(model.run({"a": a, "b": b})["y"], np.maximum(a + b, 0))


def _model(tmp_path, name, nodes, shape, inits=(), opset=17):
    from onnx import helper

    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", 1, list(shape))],
                          [helper.make_tensor_value_info("y", 1, None)], initializer=list(inits))  # fmt: skip
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())
    return path


def _hard_swish_se_model(tmp_path):
    """x -> Add 3 -> Clip 0..6 -> Div 6 -> Mul x (hard-swish) -> Mul per-channel -> Sigmoid."""
    from onnx import helper, numpy_helper

    c = lambda n, v: numpy_helper.from_array(np.asarray(v, np.float32), n)  # noqa: E731
    nodes = [
        helper.make_node("Add", ["x", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["b"]),
        helper.make_node("Div", ["b", "six"], ["d"]),
        helper.make_node("Mul", ["x", "d"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["y"]),
    ]
    inits = [c("three", 3.0), c("zero", 0.0), c("six", 6.0), c("scale", rand(4, 1, 1, seed=5))]
    return _model(tmp_path, "hswish", nodes, (2, 4, 5, 3), inits), inits[-1]


def test_elementwise_chain_is_one_generated_kernel(tmp_path, runtime) -> None:
    from onnx import numpy_helper

    path, scale = _hard_swish_se_model(tmp_path)
    model = runtime.load(path)
    assert [n.op for n in model.graph.nodes] == ["ElementwiseChain"]
    x = rand(2, 4, 5, 3, seed=6, low=-5, high=5)
    hs = x * np.clip(x + 3, 0, 6) / 6
    want = 1 / (1 + np.exp(-(hs * numpy_helper.to_array(scale))))
    assert_close(model.run({"x": x})["y"], want)
    labels = [s.label for s in model.plan({"x": x.shape}).plan.steps if s.kind == "opencl"]
    assert labels == ["ElementwiseChain"]


def test_chain_falls_back_to_its_original_nodes_when_kernels_do_not_build(tmp_path) -> None:
    from onnx import numpy_helper

    from legacygpu.worker.opencl.device import open_device
    from legacygpu.worker.opencl.executor import OpenCLRuntime

    path, scale = _hard_swish_se_model(tmp_path)
    broken = OpenCLRuntime(open_device(), {"elementwise": "not OpenCL"})
    model = broken.load(path)
    x = rand(2, 4, 5, 3, seed=7, low=-5, high=5)
    hs = x * np.clip(x + 3, 0, 6) / 6
    assert_close(model.run({"x": x})["y"], 1 / (1 + np.exp(-(hs * numpy_helper.to_array(scale)))))
    reports = model.plan({"x": x.shape}).plan.reports
    assert [(r.op, r.placement) for r in reports] == [("ElementwiseChain", "onnxruntime")]
    assert len(reports[0].sources) == 6


def test_decomposed_layer_norm_becomes_one_kernel(tmp_path, runtime) -> None:
    from onnx import helper, numpy_helper

    gamma, beta = rand(24, seed=8), rand(24, seed=9)
    c = lambda n, v: numpy_helper.from_array(np.asarray(v, np.float32), n)  # noqa: E731
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]),
        helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["e"]),
        helper.make_node("Sqrt", ["e"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["n"]),
        helper.make_node("Mul", ["n", "g"], ["t"]),
        helper.make_node("Add", ["t", "b"], ["y"]),
    ]
    path = _model(tmp_path, "ln", nodes, (3, 7, 24), [c("two", 2.0), c("eps", 1e-5), c("g", gamma), c("b", beta)],
                  opset=12)  # fmt: skip
    model = runtime.load(path)
    assert [n.op for n in model.graph.nodes] == ["LayerNormalization"]
    x = rand(3, 7, 24, seed=10, low=-1, high=3)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    assert_close(model.run({"x": x})["y"], (x - mu) / np.sqrt(var + 1e-5) * gamma + beta, atol=1e-5)
