"""Request tensors checked against model cards before a task is accepted."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from legacygpu.core.errors import ValidationError
from legacygpu.core.modelcards import ImageSpec, ModelCard, TensorSpec
from legacygpu.core.tensors import Tensor, check_consistent, from_numpy, to_numpy, validate_inputs

SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "digits" / "digit-3.png"
SAMPLE_B64 = base64.b64encode(SAMPLE.read_bytes()).decode()

CARD = ModelCard(
    name="m",
    inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 64], image=ImageSpec(size=(8, 8)))],
)


def tensor(**kw: object) -> dict[str, object]:
    return {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64, **kw}


def test_valid_numeric_and_image_inputs_pass() -> None:
    validate_inputs(CARD, [tensor()])
    validate_inputs(CARD, [tensor(shape=[3, 64], data=[1] * 192, datatype="INT32")])  # ints widen to floats
    image = base64.b64encode(SAMPLE.read_bytes()).decode()
    validate_inputs(CARD, [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [image]}])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (tensor(shape=[1, 63], data=[0.0] * 63), r"shape \[1, 63\] does not match the model's \['N', 64\]"),
        (tensor(shape=[1, 64], data=[0.0] * 10), "needs 64 values but data has 10"),
        (tensor(datatype="FP99"), "unknown datatype 'FP99'"),
        (tensor(name="pixels"), "has no input 'pixels'"),
        (tensor(data=["a"] * 64), "not valid FP32"),
        ({"name": "input", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}, "not valid base64"),
        (
            {"name": "input", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"hello").decode()]},
            "not a readable image",
        ),
        ({"name": "input", "shape": [1, 64]}, "malformed input tensor"),
        (
            {"name": "input", "shape": [2], "datatype": "BYTES", "data": [SAMPLE_B64]},
            r"shape \[2\] needs 2 values but data has 1",
        ),
    ],
)
def test_bad_inputs_name_the_problem(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_inputs(CARD, [bad])


def test_floats_do_not_narrow_to_integers() -> None:
    card = ModelCard(name="ids", inputs=[TensorSpec(name="ids", datatype="INT64", shape=[-1])])
    with pytest.raises(ValidationError, match="FP32 cannot be converted to INT64"):
        validate_inputs(card, [{"name": "ids", "shape": [2], "datatype": "FP32", "data": [1.5, 2.0]}])


def test_missing_and_duplicate_inputs() -> None:
    card = ModelCard(name="two", inputs=[TensorSpec(name="a", shape=[1]), TensorSpec(name="b", shape=[1])])
    one = {"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}
    with pytest.raises(ValidationError, match="needs input 'b'"):
        validate_inputs(card, [one])
    with pytest.raises(ValidationError, match="duplicate input names"):
        validate_inputs(card, [one, one])
    with pytest.raises(ValidationError, match="at least one input"):
        validate_inputs(card, [])


def test_numpy_roundtrip_keeps_shape_and_type() -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    wire = from_numpy("x", array)
    assert wire["datatype"] == "INT64" and wire["shape"] == [3, 4]
    back = to_numpy(wire)
    assert back.dtype == np.int64 and np.array_equal(back, array)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (tensor(data=[0.0] * 63), "shape [1, 64] needs 64 values but data has 63"),
        (tensor(datatype="BYTES", shape=[2], data=["aGk="]), "shape [2] needs 2 values but data has 1"),
        (tensor(datatype="FP99"), "unknown datatype 'FP99'"),
        (tensor(data=["x"] * 64), "data is not valid FP32"),
    ],
)
def test_check_consistent_without_a_card_names_the_problem(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_consistent(Tensor.model_validate(raw))


def test_check_consistent_leaves_the_model_s_needs_to_the_card() -> None:
    check_consistent(Tensor.model_validate(tensor(shape=[2, 3], data=[0.0] * 6)))  # the wrong shape for CARD
    check_consistent(Tensor.model_validate(tensor(datatype="BYTES", shape=[1], data=["not an image"])))
