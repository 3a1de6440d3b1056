"""``legacygpu bench model``: both backends' rows with their paired ratio, the JSON and the PNG (no timing asserted)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from legacygpu.cli import main as cli
from legacygpu.cli.bench_model import model_bench
from legacygpu.worker.opencl.bench_model import DEFAULT_MODELS


@pytest.fixture(scope="module")
def dctx():
    """PoCL only: the CLI's rows, JSON and PNG do not depend on the driver, and llvmpipe takes minutes here."""
    from ocl_platforms import open_platform

    return open_platform("pocl")


def test_default_models_are_every_named_model() -> None:
    # the correctness tests' models: the light ones, open_nsfw, PP-OCRv4 det/rec and the demo digits
    assert {"squeezenet", "shufflenet", "inception_v1", "inception_v2", "densenet121", "resnet50", "vgg19",
            "open_nsfw", "ppocr_det", "ppocr_rec", "digits"} <= set(DEFAULT_MODELS)  # fmt: skip
    (models,) = [p for p in model_bench.params if p.name == "models"]
    assert models.default == ",".join(DEFAULT_MODELS)


def test_bench_model_cli_rows_json_and_png(dctx, tmp_path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["bench", "model", "--models", "digits", "--batches", "1,2", "--repeats", "4", "--budget", "0",
              "--platform", "Portable", "--out-dir", str(out), "--output", "json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    record = json.loads((out / "bench-model.json").read_text())
    rows = record["rows"]
    assert json.loads(res.stdout) == rows
    assert len(record["meta"]["load_average_before"]) == 3 and len(record["meta"]["load_average_after"]) == 3
    assert record["meta"]["options"]["repeats"] == 4
    # --platform (make bench-model-rusticl passes rusticl) picked that platform's device
    assert record["meta"]["options"]["platform"] == "Portable"
    assert {r["device"] for r in rows if r["backend"] == "opencl"} == {dctx.info.name}
    assert sorted((r["model"], r["batch"], r["backend"]) for r in rows) == [
        ("digits", 1, "onnxruntime"), ("digits", 1, "opencl"), ("digits", 2, "onnxruntime"), ("digits", 2, "opencl"),
    ]  # fmt: skip
    by_key = {(r["batch"], r["backend"]): r for r in rows}
    for batch in (1, 2):
        ocl, ort = by_key[batch, "opencl"], by_key[batch, "onnxruntime"]
        for r in (ocl, ort):
            assert r["error"] is None and r["runs"] == 4  # --budget 0: exactly --repeats rounds
            assert 0 < r["latency_ms_min"] <= r["latency_ms"] <= r["latency_ms_max"]
            # throughput is the batch over the median latency (latency rounded to 0.001 ms)
            assert r["latency_ms"] == pytest.approx(1000 * batch / r["throughput_per_s"], abs=6e-4)
        # the ratio is the median of per-round ratios, inside its quartiles; within noise iff they straddle 1
        assert ocl["ratio_min"] <= ocl["ratio_q1"] <= ocl["ratio_vs_onnxruntime"] <= ocl["ratio_q3"] <= ocl["ratio_max"]
        assert ocl["within_noise"] == (ocl["ratio_q1"] <= 1 <= ocl["ratio_q3"])
        # and it is bounded by the extremes of the two backends' runs
        assert ort["latency_ms_min"] / ocl["latency_ms_max"] <= ocl["ratio_vs_onnxruntime"] * 1.01
        assert ocl["ratio_vs_onnxruntime"] <= ort["latency_ms_max"] / ocl["latency_ms_min"] * 1.01
        assert ort["ratio_vs_onnxruntime"] is None and ort["within_noise"] is None
        assert ocl["opencl_flop_share"] >= 0.9 and ort["opencl_flop_share"] is None
    png = out / "bench-model.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_unknown_model_is_a_usage_error(tmp_path) -> None:
    res = CliRunner().invoke(cli, ["bench", "model", "--models", "nosuch", "--out-dir", str(tmp_path)])
    assert res.exit_code == 2 and "nosuch" in res.output and "--models" in res.output


def test_bench_model_platform_names_what_it_found(dctx) -> None:
    """An unknown ``--platform`` is refused before any model loads, naming the platforms there are."""
    res = CliRunner().invoke(cli, ["bench", "model", "--models", "digits", "--platform", "no-such-platform"])
    assert res.exit_code == 2 and "no-such-platform" in res.output and dctx.info.platform in res.output
