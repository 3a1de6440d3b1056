"""Data-movement kernels (transpose, slice, concat, split, gather, pad, expand, tile), reshapes and layouts."""

from __future__ import annotations

import numpy as np
import pytest
from opencl_ops.ocl_helpers import assert_close, rand

TRANSPOSES = [((3, 5), (1, 0)), ((2, 3, 4), (2, 0, 1)), ((2, 3, 5, 7), (0, 2, 3, 1)), ((2, 3, 5, 7), (3, 1, 0, 2)),
              ((1, 2, 3, 4, 5), (4, 2, 0, 3, 1))]  # fmt: skip


@pytest.mark.parametrize(("shape", "perm"), TRANSPOSES)
def test_transpose(run_node, shape, perm) -> None:
    x = rand(*shape, seed=1)
    assert_close(run_node("Transpose", {"x": x}, attrs={"perm": list(perm)})["y"], x.transpose(perm))


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [([1], [4], [1], [1]), ([0, 2], [-1, 100], [0, 2], [1, 2]), ([5], [0], [1], [-2]), ([-3], [-1], [-1], [1]),
     ([0, 0, 1], [2, 6, 7], [0, 1, 2], [2, 3, 3])],
)  # fmt: skip
def test_slice(run_node, starts, ends, axes, steps) -> None:
    x = rand(3, 7, 8, seed=2)
    consts = {k: np.array(v, np.int64) for k, v in zip(("s", "e", "a", "t"), (starts, ends, axes, steps), strict=True)}
    out = run_node("Slice", {"x": x}, consts, order=["x", "s", "e", "a", "t"])
    index = [slice(None)] * 3
    for s, e, a, t in zip(starts, ends, axes, steps, strict=True):
        index[a] = slice(s, e, t)
    assert_close(out["y"], x[tuple(index)])


@pytest.mark.parametrize(("shapes", "axis"), [([(2, 3), (2, 5)], 1), ([(1, 3, 4, 4), (1, 5, 4, 4), (1, 1, 4, 4)], 1),
                                              ([(2, 3, 4), (3, 3, 4)], 0), ([(2, 3, 1), (2, 3, 6)], -1)])  # fmt: skip
def test_concat(run_node, shapes, axis: int) -> None:
    xs = {f"x{i}": rand(*s, seed=i) for i, s in enumerate(shapes)}
    assert_close(run_node("Concat", xs, attrs={"axis": axis})["y"], np.concatenate(list(xs.values()), axis=axis))


def test_split(run_node) -> None:
    x = rand(2, 9, 5, seed=3)
    out = run_node("Split", {"x": x}, {"s": np.array([2, 3, 4], np.int64)}, attrs={"axis": 1}, outputs=("a", "b", "c"))
    for name, part in zip("abc", np.split(x, [2, 5], axis=1), strict=True):
        assert_close(out[name], part)
    out = run_node("Split", {"x": x}, attrs={"axis": -1, "num_outputs": 2}, outputs=("a", "b"), opset=18)
    assert_close(out["a"], x[..., :3])
    assert_close(out["b"], x[..., 3:])


@pytest.mark.parametrize(("shape", "indices", "axis"), [((5, 4), [0, 4, 2], 0), ((3, 6, 2), [[1, -1], [0, 3]], 1),
                                                        ((4, 7), 3, 1), ((2, 3, 4), [3, 0], -1)])  # fmt: skip
def test_gather(run_node, shape, indices, axis: int) -> None:
    x = rand(*shape, seed=4)
    idx = np.array(indices, np.int64)
    out = run_node("Gather", {"x": x}, {"i": idx}, attrs={"axis": axis})
    assert_close(out["y"], np.take(x, idx, axis=axis))


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad(run_node, mode: str) -> None:
    x = rand(2, 3, 5, 4, seed=5)
    pads = [0, 1, 2, 1, 0, 0, 3, 2]
    consts = {"p": np.array(pads, np.int64), "v": np.array(1.5, np.float32)}
    out = run_node("Pad", {"x": x}, consts, attrs={"mode": mode}, order=["x", "p", "v"])
    width = list(zip(pads[:4], pads[4:], strict=True))
    want = np.pad(x, width, mode=mode, constant_values=1.5) if mode == "constant" else np.pad(x, width, mode=mode)
    assert_close(out["y"], want)


def test_expand_and_tile(run_node) -> None:
    x = rand(3, 1, 4, seed=6)
    out = run_node("Expand", {"x": x}, {"s": np.array([2, 3, 5, 4], np.int64)})
    assert_close(out["y"], np.broadcast_to(x, (2, 3, 5, 4)))
    out = run_node("Tile", {"x": x}, {"r": np.array([2, 3, 1], np.int64)})
    assert_close(out["y"], np.tile(x, (2, 3, 1)))


def test_reshapes_are_aliases(run_node) -> None:
    x = rand(2, 3, 4, 5, seed=7)
    out = run_node("Reshape", {"x": x}, {"s": np.array([0, -1, 5], np.int64)})
    assert_close(out["y"], x.reshape(2, 12, 5))
    assert all(s.kind in ("alias", "upload", "download") for s in run_node.last_plan.steps)
    assert_close(run_node("Flatten", {"x": x}, attrs={"axis": 2})["y"], x.reshape(6, 20))
    assert_close(run_node("Unsqueeze", {"x": x}, {"a": np.array([0, -1], np.int64)})["y"], x[None, ..., None])
    y = rand(2, 1, 4, 1, seed=8)
    assert_close(run_node("Squeeze", {"x": y}, {"a": np.array([3], np.int64)})["y"], y[..., 0])


def test_layout_round_trip_through_conv_and_transposes(tmp_path, runtime) -> None:
    """NHWC input -> Transpose(0,3,1,2) -> Conv -> Transpose(0,2,3,1): the transposes become free aliases."""
    from onnx import helper, numpy_helper

    w = rand(4, 3, 1, 1, seed=9)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
    ]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", 1, [2, 5, 6, 3])],
                          [helper.make_tensor_value_info("y", 1, None)], initializer=[numpy_helper.from_array(w, "w")])
    path = tmp_path / "nhwc.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    model = runtime.load(path)
    x = rand(2, 5, 6, 3, seed=10)
    got = model.run({"x": x})["y"]
    assert_close(got, np.einsum("nhwc,oc->nhwo", x, w[:, :, 0, 0]))
    kinds = [s.kind for s in model.plan({"x": x.shape}).plan.steps]
    assert "convert" not in kinds and kinds.count("alias") == 2
