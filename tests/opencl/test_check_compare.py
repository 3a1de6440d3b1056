"""``model check``'s comparison: the error definitions and which outputs count as class scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from legacygpu.worker.opencl.check import classifier_outputs, compare, has_class_score_shape


def test_relative_error_is_max_abs_over_the_references_largest_magnitude() -> None:
    got = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]], np.float32)
    ref = np.array([[1.0, 0.001, -4.0], [0.5, 0.5, 0.25]], np.float32)
    err = compare("y", got, ref)
    # |got - ref| peaks at |3 - (-4)| = 7; the reference's largest magnitude is 4
    assert err.max_abs_error == pytest.approx(7.0)
    assert err.reference_max == pytest.approx(4.0)
    assert err.max_rel_error == pytest.approx(7.0 / 4.0)  # not element-wise (1.999 / 0.001), not over |got|
    assert err.shape == [2, 3]


def test_zero_reference_and_shape_mismatch() -> None:
    zeros = np.zeros((2, 3), np.float32)
    assert compare("y", zeros, zeros).max_rel_error == 0.0
    assert compare("y", zeros + 1, zeros).max_rel_error == float("inf")
    assert compare("y", np.zeros((3, 2), np.float32), zeros).max_abs_error == float("inf")


def test_top1_only_for_class_scores() -> None:
    ref = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    same = ref + 0.01
    swapped = ref[:, [1, 0, 2]]
    assert compare("p", same, ref).top1_match is True
    assert compare("p", swapped, ref).top1_match is False
    # the caller knows the output is not made by a classifier head (a CumSum, say): no top-1
    assert compare("p", same, ref, class_scores=False).top1_match is None
    # (N, C, 1, 1) is a class-score shape; (N, T, C) sequences and integer outputs are not
    assert compare("p", swapped[:, :, None, None], ref[:, :, None, None]).top1_match is False
    seq = np.random.default_rng(0).random((1, 5, 7)).astype(np.float32)
    assert compare("s", seq, seq).top1_match is None
    assert compare("l", np.array([1, 2]), np.array([1, 2])).top1_match is None


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [((1, 1000), np.float32, True), ((4, 2), np.float32, True), ((1, 1000, 1, 1), np.float32, True),
     ((4, 1), np.float32, False), ((5,), np.float32, False), ((1, 8, 4, 4), np.float32, False),
     ((1, 40, 6625), np.float32, False), ((2, 10), np.int64, False)],
)  # fmt: skip
def test_class_score_shape(shape, dtype, expected) -> None:
    assert has_class_score_shape(np.zeros(shape, dtype)) is expected


def test_classifier_outputs_follow_the_producing_op(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    b = numpy_helper.from_array(np.ones(3, np.float32), "b")
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["sm"]),
        helper.make_node("Identity", ["sm"], ["probs"]),
        helper.make_node("CumSum", ["logits", "axis"], ["cs"]),
        helper.make_node("Add", ["x", "x"], ["doubled"]),
        helper.make_node("Gemm", ["x", "w"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
    ]
    outs = [helper.make_tensor_value_info(n, 1, None) for n in ("probs", "logits", "cs", "doubled", "flat")]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", 1, [1, 4])], outs, [w, b, axis])
    path = tmp_path / "heads.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert classifier_outputs(path) == {"probs", "logits", "flat"}
