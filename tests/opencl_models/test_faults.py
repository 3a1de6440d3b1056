"""Bad input and faults: unsupported ops, malformed files, memory exhaustion, kernels that do not build."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from legacygpu.core.errors import ModelError
from legacygpu.worker.backends import create_backend
from legacygpu.worker.opencl.check import check_model, compare


def _save(tmp: Path, name: str, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    from onnx import helper

    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(inits))
    path = tmp / f"{name}.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())
    return path


def _conv_pool_model(tmp: Path, middle: list | None = None) -> Path:
    """Conv -> Relu -> [middle] -> MaxPool -> GlobalAveragePool, NCHW input with a dynamic batch."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"])]  # fmt: skip
    last = "r"
    for node in middle or []:
        nodes.append(node)
        last = node.output[0]
    nodes += [helper.make_node("MaxPool", [last], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("GlobalAveragePool", ["p"], ["y"])]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", 1, ["N", 3, 16, 16])]
    extra = [numpy_helper.from_array(np.array(2, np.int64), "axis")] if middle else []
    return _save(tmp, "convpool" + ("_mid" if middle else ""), nodes, inputs,
                 [helper.make_tensor_value_info("y", 1, None)], [w, *extra])  # fmt: skip


def test_unsupported_op_falls_back_and_is_reported(tmp_path: Path) -> None:
    """CumSum has no OpenCL kernel: it runs on onnxruntime mid-graph and `model check` names it."""
    from onnx import helper

    path = _conv_pool_model(tmp_path, [helper.make_node("CumSum", ["r", "axis"], ["cs"])])
    result = check_model(path, dims={"N": 2})
    assert [(o.op, o.placement) for o in result.fallback_ops] == [("CumSum", "onnxruntime")]
    assert "no OpenCL kernel for CumSum" in result.fallback_ops[0].reason
    assert result.outputs[0].max_rel_error < 1e-4
    assert 0.5 < result.opencl_flop_share < 1.0
    cli = CliRunner().invoke(_check_command(), [str(path), "--dim", "N=2", "-o", "json"])
    assert cli.exit_code == 0, cli.output
    data = json.loads(cli.output)
    assert [o["op"] for o in data["fallback_ops"]] == ["CumSum"]
    assert {"name", "max_abs_error", "max_rel_error"} <= set(data["outputs"][0])
    assert 0 < data["opencl_flop_share"] < 1
    table = CliRunner().invoke(_check_command(), [str(path), "--dim", "N=2"])
    assert "CumSum_2 (CumSum): no OpenCL kernel for CumSum" in table.output
    assert "OpenCL FLOP share:" in table.output


def _check_command():
    from legacygpu.cli.model_check import check

    return check


def test_malformed_models_give_clear_errors(tmp_path: Path) -> None:
    from onnx import helper

    backend = create_backend("opencl")
    dangling = _save(tmp_path, "dangling", [helper.make_node("Relu", ["nowhere"], ["y"])],
                     [helper.make_tensor_value_info("x", 1, [1, 4])], [helper.make_tensor_value_info("y", 1, [1, 4])])
    with pytest.raises(ModelError, match=r"invalid model dangling\.onnx.*nowhere"):
        backend.load(dangling)
    good = _conv_pool_model(tmp_path)
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        truncated = tmp_path / f"cut{cut}.onnx"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ModelError, match=rf"cut{cut}\.onnx"):
            backend.load(truncated)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="no graph"):
        backend.load(empty)
    cli = CliRunner().invoke(_check_command(), [str(tmp_path / f"cut{len(data) // 3}.onnx")])
    assert cli.exit_code == 1 and "Error:" in cli.output and "cut" in cli.output


def test_allocation_beyond_device_memory_is_refused_and_the_model_stays_usable(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1, 65536), np.float32), "w")
    path = _save(tmp_path, "wide", [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", 1, ["N", 1])], [helper.make_tensor_value_info("y", 1, None)], [w])
    model = create_backend("opencl").load(path)
    huge = np.ones((1 << 20, 1), np.float32)  # output: 2^20 x 65536 floats = 256 GiB
    with pytest.raises(ModelError, match="MiB") as info:
        model.run({"x": huge})
    assert "smaller batch" in str(info.value)
    out = model.run({"x": np.full((2, 1), 3.0, np.float32)})
    assert out["y"].shape == (2, 65536) and float(out["y"].min()) == 3.0


def test_kernel_that_fails_to_build_falls_back_with_a_warning(tmp_path: Path, caplog) -> None:
    """A driver rejecting the pooling kernels (simulated by a broken source override) sends pooling to onnxruntime."""
    from legacygpu.worker.backends.opencl import OpenCLBackend

    path = _conv_pool_model(tmp_path)
    caplog.set_level(logging.WARNING, logger="legacygpu.worker.opencl")
    result = check_model(path, dims={"N": 3}, kernel_overrides={"pooling": "__kernel void broken( {"})
    assert {o.op for o in result.fallback_ops} == {"MaxPool", "GlobalAveragePool"}
    assert all("failed to build" in o.reason for o in result.fallback_ops)
    assert any("failed to build" in r.getMessage() for r in caplog.records)
    assert result.outputs[0].max_rel_error < 1e-4
    assert {o.op for o in result.ops if o.placement == "opencl"} == {"Conv"}
    # the same backend keeps serving: a model without pooling runs fully on OpenCL
    backend = OpenCLBackend(kernel_overrides={"pooling": "__kernel void broken( {"})
    from onnx import helper

    relu = _save(tmp_path, "relu", [helper.make_node("Relu", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", 1, [2, 3])], [helper.make_tensor_value_info("y", 1, None)])
    x = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    np.testing.assert_array_equal(backend.load(relu).run({"x": x})["y"], np.maximum(x, 0))


def test_gemm_kernel_build_failure_sends_convolutions_to_onnxruntime(tmp_path: Path, monkeypatch) -> None:
    from legacygpu.worker.opencl import gemm

    monkeypatch.setattr(gemm, "kernel_source", lambda: "this is not OpenCL C")
    path = _conv_pool_model(tmp_path)
    from legacygpu.worker.backends.opencl import OpenCLBackend

    model = OpenCLBackend().load(path)
    x = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    want = create_backend("onnxruntime").load(path).run({"x": x})["y"]
    assert compare("y", model.run({"x": x})["y"], want).max_rel_error < 1e-4
    reports = {r.op: r for r in model.plan({"x": x.shape}).plan.reports}
    assert reports["Conv"].placement == "onnxruntime" and "failed to build" in reports["Conv"].reason
    assert reports["MaxPool"].placement == "opencl"


def test_dynamic_batch_plans_are_cached_and_evicted(tmp_path: Path) -> None:
    from legacygpu.worker.opencl import executor

    path = _conv_pool_model(tmp_path)
    model = create_backend("opencl").load(path)
    ref = create_backend("onnxruntime").load(path)
    rng = np.random.default_rng(2)
    later = list(range(5, 5 + executor.MAX_PLANS - 1))
    for n in (1, 4, 1, *later):  # batch 1 used again: batch 4 is the least recently used when the cache is full
        x = rng.random((n, 3, 16, 16), dtype=np.float32)
        assert compare("y", model.run({"x": x})["y"], ref.run({"x": x})["y"]).max_rel_error < 1e-4
    assert len(model._plans) == executor.MAX_PLANS
    assert [k[0][1][0] for k in model._plans] == [1, *later]


def test_plans_beyond_the_memory_share_are_evicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from legacygpu.worker.opencl import executor

    model = create_backend("opencl").load(_conv_pool_model(tmp_path))
    model.run({"x": np.zeros((2, 3, 16, 16), np.float32)})
    share = next(iter(model._plans.values())).plan.peak_bytes * 1.5 / model.runtime.dctx.info.global_mem_bytes
    monkeypatch.setattr(executor, "PLAN_MEMORY_SHARE", share)  # room for batch 2's plan, not for two of them
    for n in (1, 3):
        model.run({"x": np.zeros((n, 3, 16, 16), np.float32)})
    assert [k[0][1][0] for k in model._plans] == [3]


def test_fallback_op_reads_the_input_of_a_removed_cast(tmp_path: Path) -> None:
    """A float-to-float Cast vanishes in the graph passes; the op after it still runs on onnxruntime."""
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["xc"], to=1), helper.make_node("CumSum", ["xc", "axis"], ["y"])]
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    path = _save(tmp_path, "cast_cumsum", nodes, [helper.make_tensor_value_info("x", 1, [2, 5])],
                 [helper.make_tensor_value_info("y", 1, None)], [axis])  # fmt: skip
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    out = create_backend("opencl").load(path).run({"x": x})
    np.testing.assert_allclose(out["y"], np.cumsum(x, axis=1))
