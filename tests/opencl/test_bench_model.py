"""``legacygpu bench model``: rows for both backends with their ratio, the JSON and the PNG (no timing asserted)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from legacygpu.cli import main as cli
from legacygpu.worker.opencl.bench_model import DEFAULT_MODELS, model_bench


def test_default_models_are_every_named_model() -> None:
    # the correctness tests' models: the light ones, open_nsfw, PP-OCRv4 det/rec and the demo digits
    assert {"squeezenet", "shufflenet", "inception_v1", "inception_v2", "densenet121", "resnet50", "vgg19",
            "open_nsfw", "ppocr_det", "ppocr_rec", "digits"} <= set(DEFAULT_MODELS)  # fmt: skip
    (models,) = [p for p in model_bench.params if p.name == "models"]
    assert models.default == ",".join(DEFAULT_MODELS)


def test_bench_model_cli_rows_json_and_png(dctx, tmp_path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["bench", "model", "--models", "digits", "--batches", "1,2", "--repeats", "1",
              "--out-dir", str(out), "--output", "json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "bench-model.json").read_text())
    assert json.loads(res.stdout) == rows
    assert sorted((r["model"], r["batch"], r["backend"]) for r in rows) == [
        ("digits", 1, "onnxruntime"), ("digits", 1, "opencl"), ("digits", 2, "onnxruntime"), ("digits", 2, "opencl"),
    ]  # fmt: skip
    by_key = {(r["batch"], r["backend"]): r for r in rows}
    for batch in (1, 2):
        ocl, ort = by_key[batch, "opencl"], by_key[batch, "onnxruntime"]
        for r in (ocl, ort):
            assert r["error"] is None and r["runs"] == 1
            assert r["latency_ms"] > 0
            # throughput is the batch over the median latency (latency rounded to 0.001 ms)
            assert r["latency_ms"] == pytest.approx(1000 * batch / r["throughput_per_s"], abs=6e-4)
        assert ocl["ratio_vs_onnxruntime"] == pytest.approx(ocl["throughput_per_s"] / ort["throughput_per_s"], rel=1e-2)
        assert ort["ratio_vs_onnxruntime"] == pytest.approx(1.0)
        assert ocl["opencl_flop_share"] >= 0.9 and ort["opencl_flop_share"] is None
    png = out / "bench-model.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
