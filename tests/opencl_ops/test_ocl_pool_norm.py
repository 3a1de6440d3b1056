"""Pooling, softmax, normalisation and reduction kernels against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand


def pool_ref(x, k, s, pads, mode, ceil=False, count_pad=False, dil=(1, 1)):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = k, s, dil
    pt, pl, pb, pr = pads

    def out_len(i, kk, ss, p0, p1, dd):
        span = i + p0 + p1 - ((kk - 1) * dd + 1)
        o = (-(-span // ss) if ceil else span // ss) + 1
        if ceil and (o - 1) * ss >= i + p0:
            o -= 1
        return o

    oh, ow = out_len(h, kh, sh, pt, pb, dh), out_len(w, kw, sw, pl, pr, dw)
    out = np.zeros((n, c, oh, ow), np.float64)
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * sh - pt, ox * sw - pl
            if mode == "max":
                ys = [y0 + i * dh for i in range(kh) if 0 <= y0 + i * dh < h]
                xs = [x0 + j * dw for j in range(kw) if 0 <= x0 + j * dw < w]
                out[:, :, oy, ox] = x[:, :, ys][:, :, :, xs].max(axis=(2, 3))
            else:
                y1, x1 = min(y0 + kh, h + pb), min(x0 + kw, w + pr)
                win = x[:, :, max(y0, 0): min(y1, h), max(x0, 0): min(x1, w)]
                cnt = (y1 - y0) * (x1 - x0) if count_pad else win.shape[2] * win.shape[3]
                out[:, :, oy, ox] = win.sum(axis=(2, 3)) / cnt
    return out.astype(np.float32)


POOLS = [
    # (shape, kernel, stride, pads, ceil)
    ((1, 3, 9, 9), (3, 3), (2, 2), (0, 0, 0, 0), False),
    ((2, 5, 10, 7), (3, 3), (2, 2), (1, 1, 1, 1), False),
    ((1, 4, 11, 11), (3, 3), (2, 2), (0, 0, 0, 0), True),
    ((1, 2, 8, 9), (2, 2), (2, 2), (0, 0, 0, 0), True),
    ((2, 3, 7, 6), (5, 3), (1, 2), (2, 1, 2, 1), False),
    ((1, 6, 13, 13), (3, 3), (1, 1), (1, 1, 1, 1), False),
]


@pytest.mark.parametrize("case", POOLS, ids=lambda c: f"{c[0]}k{c[1]}s{c[2]}p{c[3]}c{int(c[4])}")
@pytest.mark.parametrize("mode", ["max", "avg", "avg_count_pad"])
def test_pool(run_node, case, mode: str) -> None:
    shape, k, s, pads, ceil = case
    x = rand(*shape, seed=1)
    attrs = {"kernel_shape": list(k), "strides": list(s), "pads": list(pads), "ceil_mode": int(ceil)}
    if mode == "avg_count_pad":
        attrs["count_include_pad"] = 1
    op = "MaxPool" if mode == "max" else "AveragePool"
    out = run_node(op, {"x": x}, attrs=attrs)
    want = pool_ref(x, k, s, pads, "max" if mode == "max" else "avg", ceil, mode == "avg_count_pad")
    assert_close(out["y"], want)


def test_dilated_max_pool_and_1d(run_node) -> None:
    x = rand(1, 3, 12, 12, seed=2)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "dilations": [2, 2]}
    want = pool_ref(x, (3, 3), (1, 1), (0,) * 4, "max", dil=(2, 2))
    assert_close(run_node("MaxPool", {"x": x}, attrs=attrs)["y"], want)
    x1 = rand(2, 4, 15, seed=3)
    out = run_node("AveragePool", {"x": x1}, attrs={"kernel_shape": [4], "strides": [3], "pads": [1, 2]})
    assert_close(out["y"], pool_ref(x1[:, :, None], (1, 4), (1, 3), (0, 1, 0, 2), "avg")[:, :, 0])


@pytest.mark.parametrize("shape", [(1, 7, 5, 5), (3, 16, 1, 9), (2, 33, 13, 3), (2, 5, 17)])
def test_global_pools(run_node, shape) -> None:
    x = rand(*shape, seed=4)
    axes = tuple(range(2, len(shape)))
    assert_close(run_node("GlobalAveragePool", {"x": x})["y"], x.mean(axis=axes, keepdims=True))
    assert_close(run_node("GlobalMaxPool", {"x": x})["y"], x.max(axis=axes, keepdims=True))


def test_lrn(run_node) -> None:
    x = rand(2, 7, 5, 6, seed=5)
    size, alpha, beta, bias = 5, 1e-3, 0.75, 2.0
    out = run_node("LRN", {"x": x}, attrs={"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    sq = np.zeros_like(x, dtype=np.float64)
    for c in range(7):
        lo, hi = max(0, c - (size - 1) // 2), min(6, c + size // 2)
        sq[:, c] = (x[:, lo:hi + 1].astype(np.float64) ** 2).sum(axis=1)
    assert_close(out["y"], (x / (bias + alpha / size * sq) ** beta).astype(np.float32))


def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize(("shape", "axis"), [((3, 1000), -1), ((2, 3, 4, 5), 1), ((2, 7, 129), -1), ((5, 3, 2), 0),
                                             ((1, 40, 6625), 2)])  # fmt: skip
def test_softmax_and_log_softmax(run_node, shape, axis: int) -> None:
    x = rand(*shape, seed=6, low=-5, high=5)
    assert_close(run_node("Softmax", {"x": x}, attrs={"axis": axis})["y"], softmax_ref(x, axis))
    assert_close(run_node("LogSoftmax", {"x": x}, attrs={"axis": axis})["y"], np.log(softmax_ref(x, axis)), atol=1e-5)


def test_softmax_opset11_flattens_from_axis(run_node) -> None:
    x = rand(2, 3, 4, seed=7, low=-3, high=3)
    out = run_node("Softmax", {"x": x}, attrs={"axis": 1}, opset=11)["y"]
    assert_close(out, softmax_ref(x.reshape(2, 12), 1).reshape(2, 3, 4))


@pytest.mark.parametrize(("shape", "axis"), [((4, 64), -1), ((2, 5, 120), -1), ((3, 4, 5), 1), ((7, 1), -1)])
def test_layer_norm(run_node, shape, axis: int) -> None:
    x = rand(*shape, seed=8, low=-2, high=4)
    norm_shape = shape[axis:]
    scale, bias = rand(*norm_shape, seed=9), rand(*norm_shape, seed=10)
    out = run_node("LayerNormalization", {"x": x}, {"s": scale, "b": bias}, attrs={"axis": axis, "epsilon": 1e-5})
    axes = tuple(range(axis % len(shape), len(shape)))
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    assert_close(out["y"], ((x - mu) / np.sqrt(var + 1e-5) * scale + bias).astype(np.float32), atol=1e-5)


def test_batch_norm_runs_as_channel_affine(run_node) -> None:
    x = rand(2, 4, 5, 3, seed=11)
    g, b, m, v = rand(4, seed=12), rand(4, seed=13), rand(4, seed=14), rand(4, seed=15, low=0.5, high=2)
    out = run_node("BatchNormalization", {"x": x}, {"g": g, "b": b, "m": m, "v": v}, attrs={"epsilon": 1e-5})
    r = lambda a: a.reshape(1, -1, 1, 1)  # noqa: E731
    assert_close(out["y"], (x - r(m)) / np.sqrt(r(v) + 1e-5) * r(g) + r(b))


REDUCE = {
    "ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min, "ReduceProd": np.prod,
    "ReduceSumSquare": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "ReduceL2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "ReduceL1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
}  # fmt: skip


REDUCE_CASES = [((3, 5, 7), [-1], 1), ((3, 5, 7), [1], 0), ((2, 3, 4, 5), [2, 3], 1), ((4, 6), [0, 1], 0),
                ((2, 9, 3), [0], 1)]  # fmt: skip


@pytest.mark.parametrize("op", sorted(REDUCE))
@pytest.mark.parametrize(("shape", "axes", "keep"), REDUCE_CASES)
def test_reductions(run_node, op: str, shape, axes, keep: int) -> None:
    x = rand(*shape, seed=16, low=0.5, high=1.5)
    out = run_node(op, {"x": x}, {"axes": np.array(axes, np.int64)}, attrs={"keepdims": keep}, opset=18)
    assert_close(out["y"], np.asarray(REDUCE[op](x.astype(np.float64), axis=tuple(axes), keepdims=bool(keep)),
                                      np.float32), rtol=2e-4)  # fmt: skip
