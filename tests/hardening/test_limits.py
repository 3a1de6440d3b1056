"""The limits every input is held to, checked without a server: tensors, JSON, images, cards, the data dir."""

from __future__ import annotations

import base64
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from legacygpu.core.config import Settings, secure_data_dir
from legacygpu.core.errors import ModelError, PayloadTooLargeError, ValidationError
from legacygpu.core.limits import Limits, check_image_header, check_json, json_depth
from legacygpu.core.modelcards import ImageSpec, ModelCard, ModelRepository, PostprocessSpec, TensorSpec
from legacygpu.core.tensors import Tensor, check_limits, validate_inputs
from legacygpu.worker.processing import image_to_array, postprocess

from .images import png, png_header_only

CARD = ModelCard(name="m", inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])])
IMAGE_CARD = ModelCard(name="m", inputs=[TensorSpec(name="x", shape=[-1, 64], image=ImageSpec(size=(8, 8)))])


def image_tensor(raw: bytes) -> dict[str, object]:
    return {"name": "x", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(raw).decode()]}


@pytest.mark.parametrize(
    ("datatype", "value", "message"),
    [
        ("FP32", float("nan"), "not a finite number"),
        ("FP32", float("inf"), "not a finite number"),
        ("FP32", -float("inf"), "not a finite number"),
        ("FP32", 1e39, "outside the range of FP32"),
        ("FP16", 70000.0, "outside the range of FP16"),
        ("INT8", 300, "outside the range of INT8"),
        ("UINT8", -1, "outside the range of UINT8"),
        ("INT64", 2**64, "outside the range of INT64"),
        ("INT32", 1.5, "not a whole INT32"),
        ("FP32", "nan", "not a finite number"),
    ],
)
def test_values_outside_the_datatype_are_refused_naming_value_and_index(
    datatype: str, value: object, message: str
) -> None:
    card = ModelCard(name="m", inputs=[TensorSpec(name="x", datatype=datatype, shape=[-1, 4])])
    with pytest.raises(ValidationError, match=message) as caught:
        validate_inputs(card, [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": [0, 0, value, 0]}])
    assert "at index 2" in str(caught.value)


def test_values_at_the_edges_of_the_range_pass() -> None:
    validate_inputs(CARD, [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [3.4e38, -3.4e38, 0, 1e-45]}])
    int64 = ModelCard(name="m", inputs=[TensorSpec(name="x", datatype="INT64", shape=[4])])
    validate_inputs(int64, [{"name": "x", "shape": [4], "datatype": "INT64", "data": [2**62, -(2**62), 0, 1]}])


@pytest.mark.parametrize("shape", [[0, 4], [1, 0], [-1, -4]])
def test_empty_batches_and_negative_dimensions_are_refused(shape: list[int]) -> None:
    # [-1, -4] holds 4 "values" by the product rule: it passed before dimensions were checked.
    data = [0.0] * max(0, int(np.prod(shape)))
    with pytest.raises(ValidationError, match="dimension below 1"):
        validate_inputs(CARD, [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}])


def test_card_less_models_are_still_checked() -> None:
    bare = ModelCard(name="m")  # no inputs declared: only the card-less checks can catch this
    with pytest.raises(ValidationError, match="not a finite number"):
        validate_inputs(bare, [{"name": "x", "shape": [1], "datatype": "FP32", "data": [float("nan")]}])
    with pytest.raises(ValidationError, match="BYTES data must be strings"):
        validate_inputs(bare, [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [[[["deep"]]]]}])


def test_tensor_element_limit_is_a_413_naming_the_setting() -> None:
    limits = Limits(max_tensor_elements=100)
    tensor = Tensor(name="x", shape=[1, 101], datatype="FP32", data=[0.0] * 101)
    with pytest.raises(PayloadTooLargeError, match="LEGACYGPU_MAX_TENSOR_ELEMENTS"):
        check_limits([tensor], limits)
    check_limits([Tensor(name="x", shape=[1, 100], datatype="FP32", data=[0.0] * 100)], limits)


def test_json_depth_is_measured_without_recursion() -> None:
    deep: object = 1
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    assert json_depth(deep) == 5000
    assert json_depth({}) == 1 and json_depth(3) == 0 and json_depth({"a": [1, {"b": 2}]}) == 3


def test_check_json_refuses_deep_large_and_non_finite_values() -> None:
    nested: dict[str, object] = {}
    node = nested
    for _ in range(300):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(ValidationError, match="nests 301 levels deep; at most 32"):
        check_json("parameters", nested, max_depth=32, max_bytes=10_000, setting="S")
    with pytest.raises(PayloadTooLargeError, match=r"at most 1000 are allowed \(S\)"):
        check_json("parameters", {"k": "v" * 2000}, max_depth=32, max_bytes=1000, setting="S")
    with pytest.raises(ValidationError, match="NaN or Infinity"):
        check_json("stats", {"load": float("nan")}, max_depth=32, max_bytes=1000, setting="S")
    check_json("parameters", {"a": {"b": [1, 2, 3]}}, max_depth=32, max_bytes=1000, setting="S")


def test_image_pixels_are_refused_from_the_header_before_decoding() -> None:
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 100
    with pytest.raises(PayloadTooLargeError, match=r"too large to decode safely|50000x50000"):
        check_image_header("input 'x'", bomb, Limits().max_image_pixels)
    with pytest.raises(PayloadTooLargeError, match="9000x9000 = 81000000 pixels"):
        validate_inputs(IMAGE_CARD, [image_tensor(png_header_only(9000, 9000))])
    with pytest.raises(PayloadTooLargeError, match="LEGACYGPU_MAX_IMAGE_PIXELS"):
        check_limits([Tensor.model_validate(image_tensor(png(20, 20)))], Limits(max_image_pixels=399))
    check_limits([Tensor.model_validate(image_tensor(png(20, 20)))], Limits(max_image_pixels=400))


@pytest.mark.parametrize("image", [
    lambda: png(37, 21),
    lambda: _saved(Image.new("RGBA", (37, 21)), "PNG"),
    lambda: _saved(Image.new("L", (37, 21)), "JPEG"),
    lambda: _saved(Image.new("RGB", (37, 21)), "GIF"),
])
def test_the_header_gives_the_size_pillow_reads_whatever_the_format(image: Callable[[], bytes]) -> None:
    """PNG headers are read without Pillow (:func:`check_image_header`); any format gives Pillow's size."""
    raw = image()
    with Image.open(io.BytesIO(raw)) as opened:
        assert check_image_header("input 'x'", raw, 10_000) == opened.size == (37, 21)


def test_a_png_header_is_read_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    def unused(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow opened a PNG only to read its size")

    raw = png(37, 21)
    monkeypatch.setattr(Image, "open", unused)
    assert check_image_header("input 'x'", raw, 10_000) == (37, 21)
    with pytest.raises(PayloadTooLargeError, match="37x21"):
        check_image_header("input 'x'", raw, 776)


def test_a_png_past_pillows_own_bomb_limit_is_refused_even_under_a_higher_configured_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses to decode past twice this
    with pytest.raises(PayloadTooLargeError, match="too large to decode safely"):
        check_image_header("input 'x'", png(37, 21), 10_000)
    assert check_image_header("input 'x'", png(10, 20), 10_000) == (10, 20)


def test_a_png_header_claiming_no_pixels_is_refused_in_pillows_words() -> None:
    with pytest.raises(ValidationError, match="not a readable image file"):
        check_image_header("input 'x'", png_header_only(0, 50), 10_000)


def _saved(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_the_worker_refuses_a_bomb_before_decoding_it() -> None:
    spec = ImageSpec(size=(8, 8), color="grayscale", layout="flat")
    with pytest.raises(PayloadTooLargeError):
        image_to_array(png_header_only(50_000, 50_000), spec)
    with pytest.raises(PayloadTooLargeError, match="30x30"):
        image_to_array(png(30, 30), spec, max_pixels=899)
    assert image_to_array(png(30, 30), spec, max_pixels=900).shape == (1, 64)


def test_unreadable_image_errors_do_not_leak_object_reprs() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_inputs(IMAGE_CARD, [image_tensor(b"hello, not an image")])
    assert "object at 0x" not in str(caught.value) and "not a readable image" in str(caught.value)


def test_non_finite_outputs_fail_the_task_as_a_model_error_naming_the_output() -> None:
    card = ModelCard(name="m", postprocess=PostprocessSpec(output="y", softmax=True, top_k=1))
    with pytest.raises(ModelError, match=r"2 non-finite value\(s\) \(NaN or Infinity\) in output 'y' of 3"):
        postprocess(card, {"y": np.array([[np.nan, 1.0, np.inf]], dtype=np.float32)})
    assert postprocess(card, {"y": np.array([[0.0, 1.0, 2.0]], dtype=np.float32)})["top_k"][0]["index"] == 2


@pytest.mark.parametrize("file", ["../../../x.onnx", "/etc/passwd", "sub/model.onnx", "..", "", "a\\b.onnx"])
def test_model_card_file_must_stay_in_the_model_folder(file: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        ModelCard(name="m", file=file)


@pytest.mark.parametrize("name", ["../../x", "UPPER", "a..b", "-x", "a/b"])
def test_repository_refuses_names_that_are_not_model_names(tmp_path: Path, name: str) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    card = ModelCard.model_construct(name=name, file="model.onnx")  # as if built past validation
    with pytest.raises(ValidationError, match="is not valid: use 1-63 lowercase"):
        ModelRepository(tmp_path / "repo").add(card, onnx)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("**/card.yaml"))


def test_secure_data_dir_makes_everything_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "models" / "digits").mkdir(parents=True)
    (data / "models" / "digits" / "card.yaml").write_text("name: digits\n")
    (data / "cluster.db").write_bytes(b"")
    os.chmod(data, 0o755)
    os.chmod(data / "cluster.db", 0o644)
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    (data / "link").symlink_to(outside)
    secure_data_dir(data)
    mode = lambda p: stat.S_IMODE(p.lstat().st_mode)  # noqa: E731
    assert mode(data) == 0o700 and mode(data / "models") == 0o700 and mode(data / "models" / "digits") == 0o700
    assert mode(data / "cluster.db") == 0o600 and mode(data / "models" / "digits" / "card.yaml") == 0o600
    assert mode(outside) == 0o644, "a link's target outside the data dir is left alone"


def test_settings_carry_every_limit() -> None:
    settings = Settings(max_image_pixels=1234, max_json_depth=7)
    assert settings.limits == Limits(max_image_pixels=1234, max_json_depth=7)
    assert set(Limits.model_fields) <= set(Settings.model_fields)
