"""Open Inference Protocol (v2) tensors: the one wire format for inputs and outputs.

A tensor is ``{"name", "shape", "datatype", "data"}`` with ``data`` flat in
row-major order. An image travels as a ``BYTES`` tensor of shape ``[1]``
whose element is the base64 of the image file; the model card says how the
worker turns it into the model's input.

:func:`validate_inputs` checks a request against a model card before it is
accepted, so a wrong shape or datatype is a 4xx at submit time rather than
a failed task later. Every tensor is held to :class:`~legacygpu.core.limits.Limits`:
each dimension at least 1 (an empty batch is refused here, not failed on a
worker), at most ``max_tensor_elements`` values, each finite and inside its
datatype's range (``1e39`` is not an FP32, ``300`` not an INT8), and images no
larger than ``max_image_pixels``, read from the header before decoding.
NaN and Infinity are always refused: JSON cannot carry them to a worker.
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

from legacygpu.core.errors import PayloadTooLargeError, ValidationError
from legacygpu.core.limits import Limits, check_image_header, check_json
from legacygpu.core.modelcards import DATATYPES, ModelCard, TensorSpec

__all__ = [
    "NUMPY_DTYPES",
    "Tensor",
    "check_consistent",
    "check_limits",
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
_DEFAULT_LIMITS = Limits()


def _value_range(datatype: str) -> tuple[float, float]:
    if datatype == "BOOL":
        return 0, 1
    kind = NUMPY_DTYPES[datatype]
    info: Any = np.iinfo(kind) if datatype in _INTEGER else np.finfo(kind)
    return info.min, info.max


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


def _check_image(tensor: Tensor, limits: Limits) -> None:
    from PIL import Image, UnidentifiedImageError

    raw = decode_image_bytes(tensor)
    check_image_header(f"input {tensor.name!r}", raw, limits.max_image_pixels)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValidationError(f"input {tensor.name!r}: not a readable image file: {exc}") from exc


def _shape_matches(shape: Sequence[int], spec: Sequence[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d < 0 for s, d in zip(shape, spec, strict=True))


def _check_values(tensor: Tensor) -> None:
    """Every value finite and inside the datatype's range; integers whole."""
    try:
        values = np.asarray(tensor.data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(f"input {tensor.name!r}: data is not valid {tensor.datatype}: {exc}") from exc
    values = values.ravel()
    low, high = _value_range(tensor.datatype)
    problems = [
        (~np.isfinite(values), "is not a finite number (NaN and Infinity are refused)"),
        ((values < low) | (values > high), f"is outside the range of {tensor.datatype} ({low:g} to {high:g})"),
    ]
    if tensor.datatype in _INTEGER:
        problems.append((np.isfinite(values) & (values != np.floor(values)), f"is not a whole {tensor.datatype}"))
    for bad, why in problems:
        if bad.any():
            index = int(np.argmax(bad))
            raise ValidationError(f"input {tensor.name!r}: value {tensor.data[index]!r} at index {index} {why}")


def check_consistent(tensor: Tensor, limits: Limits = _DEFAULT_LIMITS) -> None:
    """What can be checked without the model: a known datatype, dimensions of at least 1, as many values as
    the shape holds and no more than ``limits`` allow, finite numbers inside the datatype's range, text for
    BYTES. The operator checks this much before any worker sees a task; :func:`validate_inputs` more."""
    if tensor.datatype not in DATATYPES:
        raise ValidationError(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
    if any(d < 1 for d in tensor.shape):
        raise ValidationError(
            f"input {tensor.name!r}: shape {tensor.shape} has a dimension below 1; "
            "every dimension (the batch too) needs at least one item"
        )
    expected = math.prod(tensor.shape)
    if expected > limits.max_tensor_elements:
        raise PayloadTooLargeError(
            f"input {tensor.name!r}: shape {tensor.shape} holds {expected} values; at most "
            f"{limits.max_tensor_elements} are allowed (LEGACYGPU_MAX_TENSOR_ELEMENTS)"
        )
    if len(tensor.data) != expected:
        raise ValidationError(
            f"input {tensor.name!r}: shape {tensor.shape} needs {expected} values but data has {len(tensor.data)}"
        )
    if tensor.parameters:
        check_json(
            f"input {tensor.name!r} parameters", tensor.parameters, max_depth=limits.max_json_depth,
            max_bytes=limits.max_parameters_bytes, setting="LEGACYGPU_MAX_PARAMETERS_BYTES",
        )
    if tensor.datatype == "BYTES":
        if not all(isinstance(item, str) for item in tensor.data):
            raise ValidationError(f"input {tensor.name!r}: BYTES data must be strings (base64 for images)")
        return
    _check_values(tensor)
    to_numpy(tensor)


def check_limits(tensors: Sequence[Tensor], limits: Limits) -> None:
    """The card-less checks under configured ``limits``: :func:`check_consistent` for each tensor, and the
    pixel limit for any ``BYTES`` tensor that holds an image (read from its header; a non-image is left
    for the card check to refuse)."""
    for tensor in tensors:
        check_consistent(tensor, limits)
        if tensor.datatype != "BYTES" or len(tensor.data) != 1:
            continue
        try:
            raw = decode_image_bytes(tensor)
            check_image_header(f"input {tensor.name!r}", raw, limits.max_image_pixels)
        except PayloadTooLargeError:
            raise
        except ValidationError:
            continue


def _check_tensor(tensor: Tensor, spec: TensorSpec, limits: Limits) -> None:
    if tensor.datatype == "BYTES":
        if spec.image is None:
            raise ValidationError(
                f"input {tensor.name!r}: model takes {spec.datatype} {spec.shape}, not BYTES (no image input)"
            )
        _check_image(tensor, limits)
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


def validate_inputs(
    card: ModelCard, inputs: Sequence[Tensor | dict[str, Any]], limits: Limits = _DEFAULT_LIMITS
) -> list[Tensor]:
    """Check ``inputs`` against the card and ``limits``; returns them parsed. Raises :class:`ValidationError`."""
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
    for tensor in tensors:
        check_consistent(tensor, limits)
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
            _check_tensor(tensor, spec, limits)
    return tensors
