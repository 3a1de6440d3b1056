"""Convolution kernels (1x1 GEMM, im2col + GEMM, grouped, depthwise, transposed, 1-D) against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand


def conv_ref(x, w, b, strides, pads, dil, group):
    """Direct NCHW convolution in float64 (pads = begin..., end...)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, _c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dil
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (wd + pads[1] + pads[3] - ((kw - 1) * dw + 1)) // sw + 1
    out = np.zeros((n, cout, oh, ow))
    og = cout // group
    for g in range(group):
        for ky in range(kh):
            for kx in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, ky * dh: ky * dh + sh * (oh - 1) + 1: sh,
                           kx * dw: kx * dw + sw * (ow - 1) + 1: sw]  # fmt: skip
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, ky, kx])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out.astype(np.float32)


CASES = [
    # (N, C, H, W, Cout, k, stride, pad, dilation, group)
    (1, 3, 9, 9, 8, 1, 1, 0, 1, 1),  # pointwise: plain GEMM on the NHWC tensor
    (2, 16, 7, 5, 33, 1, 1, 0, 1, 1),  # pointwise, odd Cout (padded GEMM tile)
    (1, 3, 17, 13, 5, 3, 1, 1, 1, 1),
    (2, 5, 11, 10, 7, 3, 2, 1, 1, 1),
    (1, 4, 12, 12, 6, 5, 2, 2, 1, 1),
    (1, 3, 10, 9, 4, 3, 1, 2, 2, 1),  # dilated
    (1, 2, 16, 16, 3, 7, 2, 3, 1, 1),
    (1, 6, 8, 8, 9, 3, 1, 1, 1, 3),  # grouped
    (2, 12, 6, 7, 12, 1, 1, 0, 1, 4),  # grouped pointwise
    (1, 8, 9, 9, 8, 3, 1, 1, 1, 8),  # depthwise
    (2, 5, 10, 7, 5, 3, 2, 1, 1, 5),  # depthwise, strided, odd sizes
    (1, 4, 8, 8, 8, 3, 1, 1, 1, 4),  # depthwise with channel multiplier 2
    (1, 3, 6, 6, 4, 1, 2, 0, 1, 1),  # strided 1x1 goes through im2col
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d(run_node, case, with_bias: bool) -> None:
    n, c, h, w, cout, k, s, p, d, g = case
    x = rand(n, c, h, w, seed=1)
    wt = rand(cout, c // g, k, k, seed=2)
    consts = {"w": wt}
    b = None
    if with_bias:
        b = rand(cout, seed=3)
        consts["b"] = b
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "dilations": [d, d], "group": g}
    out = run_node("Conv", {"x": x}, consts, attrs)
    assert_close(out["y"], conv_ref(x, wt, b, (s, s), [p] * 4, (d, d), g), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c[-1] == 1 or c[-1] == c[1]], ids=lambda c: "x".join(map(str, c)))
def test_conv2d_gpu_style_kernels(run_node, monkeypatch, case) -> None:
    """The per-element im2col and per-channel depthwise kernels GPUs get, checked here on PoCL."""
    from legacygpu.worker.opencl.ops import conv

    monkeypatch.setattr(conv, "cpu_style", lambda _pc: False)
    n, c, h, w, cout, k, s, p, d, g = case
    x, wt, b = rand(n, c, h, w, seed=1), rand(cout, c // g, k, k, seed=2), rand(cout, seed=3)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "dilations": [d, d], "group": g}
    out = run_node("Conv", {"x": x}, {"w": wt, "b": b}, attrs)
    assert_close(out["y"], conv_ref(x, wt, b, (s, s), [p] * 4, (d, d), g), rtol=1e-4, atol=1e-5)


def test_conv_asymmetric_pads_and_same_upper(run_node) -> None:
    x = rand(1, 3, 10, 11, seed=4)
    wt = rand(4, 3, 3, 3, seed=5)
    out = run_node("Conv", {"x": x}, {"w": wt}, {"kernel_shape": [3, 3], "pads": [0, 1, 2, 0]})
    assert_close(out["y"], conv_ref(x, wt, None, (1, 1), [0, 1, 2, 0], (1, 1), 1))
    out = run_node("Conv", {"x": x}, {"w": wt}, {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"})
    # SAME_UPPER, stride 2: output ceil(10/2) x ceil(11/2) = 5 x 6; total pads 1 (H) and 2 (W),
    # the odd one going to the end: top 0, left 1, bottom 1, right 1
    assert out["y"].shape == (1, 4, 5, 6)
    assert_close(out["y"], conv_ref(x, wt, None, (2, 2), [0, 1, 1, 1], (1, 1), 1))


def test_conv_large_image_uses_row_blocks(run_node, monkeypatch) -> None:
    """With a tiny im2col budget the patch matrix is built in several row blocks; results are unchanged."""
    from legacygpu.worker.opencl.ops import conv

    monkeypatch.setattr(conv, "IM2COL_BUDGET", 4 * 27 * 50)  # 50 rows of 27 columns at a time
    x = rand(2, 3, 15, 14, seed=6)
    wt = rand(5, 3, 3, 3, seed=7)
    b = rand(5, seed=8)
    out = run_node("Conv", {"x": x}, {"w": wt, "b": b}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    im2cols = [s for s in run_node.last_plan.steps if s.label == "Conv im2col"]
    assert len(im2cols) > 4
    assert_close(out["y"], conv_ref(x, wt, b, (1, 1), [1, 1, 1, 1], (1, 1), 1))


def test_conv1d(run_node) -> None:
    x = rand(2, 4, 19, seed=9)
    wt = rand(6, 4, 5, seed=10)
    out = run_node("Conv", {"x": x}, {"w": wt}, {"kernel_shape": [5], "pads": [2, 1], "strides": [2]})
    want = conv_ref(x[:, :, None, :], wt[:, :, None, :], None, (1, 2), [0, 2, 0, 1], (1, 1), 1)[:, :, 0, :]
    assert_close(out["y"], want)


def conv_transpose_ref(x, w, b, stride, pads, out_pad=(0, 0)):
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, _cin, h, wd = x.shape
    _, cout, kh, kw = w.shape
    full = np.zeros((n, cout, (h - 1) * stride[0] + kh + out_pad[0], (wd - 1) * stride[1] + kw + out_pad[1]))
    for iy in range(h):
        for ix in range(wd):
            full[:, :, iy * stride[0]: iy * stride[0] + kh, ix * stride[1]: ix * stride[1] + kw] += np.einsum(
                "nc,cokl->nokl", x[:, :, iy, ix], w)
    out = full[:, :, pads[0]: full.shape[2] - pads[2], pads[1]: full.shape[3] - pads[3]]
    return (out + (b.reshape(1, -1, 1, 1) if b is not None else 0)).astype(np.float32)


@pytest.mark.parametrize(("k", "s", "p"), [(2, 2, 0), (4, 2, 1), (3, 1, 1), (3, 2, 0)])
def test_conv_transpose(run_node, k: int, s: int, p: int) -> None:
    x = rand(2, 5, 6, 7, seed=11)
    wt = rand(5, 3, k, k, seed=12)
    b = rand(3, seed=13)
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4}
    out = run_node("ConvTranspose", {"x": x}, {"w": wt, "b": b}, attrs)
    assert_close(out["y"], conv_transpose_ref(x, wt, b, (s, s), [p] * 4))


def test_conv_relu_fusion_and_batchnorm_folding(tmp_path, runtime) -> None:
    """Conv -> BatchNormalization -> Relu is folded into one Conv with an epilogue; values match numpy."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    wt = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    mean, var = rng.standard_normal(6).astype(np.float32), rng.uniform(0.5, 2, 6).astype(np.float32)
    inits = [numpy_helper.from_array(v, n) for n, v in
             {"w": wt, "g": gamma, "be": beta, "m": mean, "v": var}.items()]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["bn"], epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["y"]),
    ]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", 1, None)], initializer=inits)  # fmt: skip
    path = tmp_path / "cbr.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    model = runtime.load(path)
    assert [n.op for n in model.graph.nodes] == ["Conv"]
    assert model.graph.nodes[0].activation[0] == "relu"
    assert model.graph.nodes[0].sources == ["Conv_0", "BatchNormalization_1", "Relu_2"]
    x = rand(1, 3, 8, 8, seed=3)
    c = conv_ref(x, wt, None, (1, 1), [1, 1, 1, 1], (1, 1), 1).astype(np.float64)
    bn = (c - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + 1e-3) * gamma.reshape(1, -1, 1, 1)
    want = np.maximum(bn + beta.reshape(1, -1, 1, 1), 0).astype(np.float32)
    assert_close(model.run({"x": x})["y"], want, rtol=1e-4)
