"""Open Inference Protocol (v2) tensors: the one wire format for inputs and outputs.

A tensor is ``{"name", "shape", "datatype", "data"}`` with ``data`` flat in
row-major order. An image travels as a ``BYTES`` tensor of shape ``[1]``
whose element is the base64 of the image file; the model card says how the
worker turns it into the model's input.

:func:`validate_inputs` checks a request against a model card before it is
accepted, so a wrong shape or datatype is a 4xx at submit time rather than
a failed task later.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from legacygpu.core.errors import ValidationError
from legacygpu.core.modelcards import DATATYPES, ModelCard, TensorSpec

__all__ = [
    "NUMPY_DTYPES",
    "Tensor",
    "check_consistent",
    "decode_image_bytes",
    "from_numpy",
    "to_numpy",
    "validate_inputs",
]

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_FROM_NUMPY = {np.dtype(v).name: k for k, v in NUMPY_DTYPES.items()}
_INTEGER = {"BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64"}


class Tensor(BaseModel):
    """One named tensor, as the Open Inference Protocol sends it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


def to_numpy(tensor: Tensor | dict[str, Any]) -> np.ndarray:
    """A numeric tensor as an array of its shape; :class:`ValidationError` if inconsistent."""
    t = tensor if isinstance(tensor, Tensor) else Tensor.model_validate(tensor)
    if t.datatype not in NUMPY_DTYPES:
        raise ValidationError(f"input {t.name!r}: datatype {t.datatype} is not numeric")
    expected = math.prod(t.shape)
    if len(t.data) != expected:
        raise ValidationError(
            f"input {t.name!r}: shape {t.shape} needs {expected} values but data has {len(t.data)}"
        )
    try:
        return np.asarray(t.data, dtype=NUMPY_DTYPES[t.datatype]).reshape(t.shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(f"input {t.name!r}: data is not valid {t.datatype}: {exc}") from exc


def from_numpy(name: str, array: np.ndarray) -> dict[str, Any]:
    """An array as a JSON-ready tensor."""
    array = np.asarray(array)
    datatype = _FROM_NUMPY.get(array.dtype.name)
    if datatype is None:
        raise ValidationError(f"output {name!r}: dtype {array.dtype} has no Open Inference Protocol type")
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}


def decode_image_bytes(tensor: Tensor) -> bytes:
    """The raw file bytes of an image tensor (``BYTES``, one base64 element)."""
    if tensor.datatype != "BYTES" or len(tensor.data) != 1 or not isinstance(tensor.data[0], str):
        raise ValidationError(
            f"input {tensor.name!r}: an image is sent as datatype BYTES, shape [1], "
            "data [<base64 of the image file>]"
        )
    try:
        return base64.b64decode(tensor.data[0], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError(f"input {tensor.name!r}: image data is not valid base64: {exc}") from exc


def _check_image(tensor: Tensor) -> None:
    from PIL import Image, UnidentifiedImageError

    raw = decode_image_bytes(tensor)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValidationError(f"input {tensor.name!r}: not a readable image file: {exc}") from exc


def _shape_matches(shape: Sequence[int], spec: Sequence[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d < 0 for s, d in zip(shape, spec, strict=True))


def check_consistent(tensor: Tensor) -> None:
    """What can be checked without the model: a known datatype, as many values as the shape holds, numbers
    that parse. The operator checks this much before any worker sees a task; :func:`validate_inputs` more."""
    if tensor.datatype not in DATATYPES:
        raise ValidationError(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
    if tensor.datatype != "BYTES":
        to_numpy(tensor)
    elif len(tensor.data) != math.prod(tensor.shape):
        raise ValidationError(
            f"input {tensor.name!r}: shape {tensor.shape} needs {math.prod(tensor.shape)} values "
            f"but data has {len(tensor.data)}"
        )


def _check_tensor(tensor: Tensor, spec: TensorSpec) -> None:
    check_consistent(tensor)
    if tensor.datatype == "BYTES":
        if spec.image is None:
            raise ValidationError(
                f"input {tensor.name!r}: model takes {spec.datatype} {spec.shape}, not BYTES (no image input)"
            )
        _check_image(tensor)
        return
    if tensor.datatype != spec.datatype and not (
        tensor.datatype in NUMPY_DTYPES and spec.datatype in NUMPY_DTYPES
        and (tensor.datatype in _INTEGER or spec.datatype not in _INTEGER)
    ):
        raise ValidationError(
            f"input {tensor.name!r}: datatype {tensor.datatype} cannot be converted to {spec.datatype}"
        )
    if spec.shape and not _shape_matches(tensor.shape, spec.shape):
        wanted = ["N" if d < 0 else d for d in spec.shape]
        raise ValidationError(
            f"input {tensor.name!r}: shape {tensor.shape} does not match the model's {wanted}"
        )


def validate_inputs(card: ModelCard, inputs: Sequence[Tensor | dict[str, Any]]) -> list[Tensor]:
    """Check ``inputs`` against the card; returns them parsed. Raises :class:`ValidationError`."""
    tensors: list[Tensor] = []
    for raw in inputs:
        try:
            tensors.append(raw if isinstance(raw, Tensor) else Tensor.model_validate(raw))
        except ValueError as exc:
            raise ValidationError(f"malformed input tensor: {exc}") from exc
    if not tensors:
        raise ValidationError("a task needs at least one input tensor")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValidationError(f"duplicate input names in {names}")
    if card.inputs:
        expected = {spec.name for spec in card.inputs}
        unknown = [n for n in names if n not in expected]
        if unknown:
            raise ValidationError(
                f"model {card.name!r} has no input {unknown[0]!r} (its inputs: {', '.join(sorted(expected))})"
            )
        missing = sorted(expected - set(names))
        if missing:
            raise ValidationError(f"model {card.name!r} needs input {missing[0]!r}")
        for tensor in tensors:
            spec = card.input(tensor.name)
            assert spec is not None
            _check_tensor(tensor, spec)
    return tensors
