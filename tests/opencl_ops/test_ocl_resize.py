"""Resize: nearest and bilinear against numpy, and every coordinate mode against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand


def test_nearest_upsample_by_two_is_repeat(run_node) -> None:
    x = rand(2, 3, 5, 7, seed=1)
    scales = np.array([1, 1, 2, 2], np.float32)
    out = run_node("Resize", {"x": x}, {"roi": np.zeros(0, np.float32), "s": scales},
                   attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"})
    assert_close(out["y"], x.repeat(2, axis=2).repeat(2, axis=3))


def bilinear_half_pixel(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    h, w = x.shape[2:]
    fy = np.clip((np.arange(oh) + 0.5) * h / oh - 0.5, 0, h - 1)
    fx = np.clip((np.arange(ow) + 0.5) * w / ow - 0.5, 0, w - 1)
    y0, x0 = np.floor(fy).astype(int), np.floor(fx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = (fy - y0)[:, None], (fx - x0)[None, :]
    top = x[:, :, y0][:, :, :, x0] * (1 - dx) + x[:, :, y0][:, :, :, x1] * dx
    bottom = x[:, :, y1][:, :, :, x0] * (1 - dx) + x[:, :, y1][:, :, :, x1] * dx
    return (top * (1 - dy) + bottom * dy).astype(np.float32)


def test_bilinear_half_pixel_with_sizes(run_node) -> None:
    x = rand(1, 4, 6, 5, seed=2)
    sizes = np.array([1, 4, 13, 9], np.int64)
    out = run_node("Resize", {"x": x}, {"roi": np.zeros(0, np.float32), "sc": np.zeros(0, np.float32), "sz": sizes},
                   attrs={"mode": "linear"})  # fmt: skip
    assert_close(out["y"], bilinear_half_pixel(x, 13, 9))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("coord", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])
@pytest.mark.parametrize("scale", [2.0, 0.5, 1.7])
def test_resize_modes_match_onnxruntime(run_node, mode: str, coord: str, scale: float) -> None:
    import onnxruntime
    from onnx import helper, numpy_helper

    x = rand(1, 3, 8, 11, seed=3)
    scales = np.array([1, 1, scale, scale], np.float32)
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    out = run_node("Resize", {"x": x}, {"roi": np.zeros(0, np.float32), "s": scales}, attrs=attrs)["y"]
    node = helper.make_node("Resize", ["x", "roi", "s"], ["y"], **attrs)
    g = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", 1, list(x.shape))],
                          [helper.make_tensor_value_info("y", 1, None)],
                          initializer=[numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
                                       numpy_helper.from_array(scales, "s")])  # fmt: skip
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_close(out, sess.run(None, {"x": x})[0], atol=1e-5)
