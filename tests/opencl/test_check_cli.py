"""``legacygpu model check`` end to end on PoCL: default dynamic dims, ``--tolerance``, top-1 reporting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from legacygpu.cli import main as cli

K = 512  # a long dot product: OpenCL and onnxruntime sum it in different orders, so the error is not 0


@pytest.fixture(scope="module")
def model(dctx, tmp_path_factory) -> Path:
    """x[N, K] -> MatMul + Add -> logits -> Softmax -> probs; logits -> CumSum -> cs (onnxruntime)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((K, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
        numpy_helper.from_array(np.array(1, np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"]),
        helper.make_node("CumSum", ["logits", "axis"], ["cs"]),
    ]
    outs = [helper.make_tensor_value_info(n, 1, None) for n in ("probs", "cs")]
    graph = helper.make_graph(nodes, "clf", [helper.make_tensor_value_info("x", 1, ["N", K])], outs, inits)
    path = tmp_path_factory.mktemp("check") / "clf.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.fixture(autouse=True)
def _on_each_platform(on_platform) -> None:
    """`model check` runs on the parametrised platform's device (LEGACYGPU_OPENCL_DEVICE)."""


def _check(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, ["model", "check", *args])
    return res.exit_code, res.stdout, res.stderr


def test_dynamic_dims_are_1_unless_given(model: Path, dctx) -> None:
    code, out, err = _check(str(model), "-o", "json")
    assert code == 0, out + err
    data = json.loads(out)
    assert dctx.info.name in data["device"]  # the platform under test, not the default device
    assert data["input_shapes"] == {"x": [1, K]}
    assert [o["shape"] for o in data["outputs"]] == [[1, 3], [1, 3]]
    code, out, err = _check(str(model), "--dim", "N=3", "-o", "json")
    assert code == 0, out + err
    assert json.loads(out)["input_shapes"] == {"x": [3, K]}


def test_top1_is_reported_for_class_scores_only(model: Path) -> None:
    code, out, err = _check(str(model), "--dim", "N=4", "-o", "json")
    assert code == 0, out + err
    outputs = {o["name"]: o for o in json.loads(out)["outputs"]}
    assert outputs["probs"]["top1_match"] is True  # a Softmax of a fully connected layer
    assert outputs["cs"]["top1_match"] is None  # a CumSum of shape (4, 3) is no class score


def test_tolerance_exceeded_exits_1(model: Path) -> None:
    code, out, err = _check(str(model), "--dim", "N=2", "-o", "json")
    assert code == 0, out + err
    worst = max(o["max_rel_error"] for o in json.loads(out)["outputs"])
    assert 0 < worst < 1e-4
    code, out, err = _check(str(model), "--dim", "N=2", "--tolerance", str(worst * 2), "-o", "json")
    assert code == 0, out + err
    code, out, err = _check(str(model), "--dim", "N=2", "--tolerance", str(worst / 2), "-o", "json")
    assert code == 1
    assert "exceeds the tolerance" in err
    assert json.loads(out)["outputs"], "the report is still printed before the failing exit"
