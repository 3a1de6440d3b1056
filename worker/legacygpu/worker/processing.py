"""Pre- and post-processing driven by a model card.

Pre-processing turns what a person sends (an image file, or numbers) into
the arrays the model takes; post-processing turns raw outputs into tensors
for the reply and, for classifiers, ``top_k`` with labels. Everything here
is numpy and Pillow: the same on every backend.

Two guards keep one bad task from taking the worker down: an image's pixel
count is read from its header and refused before anything is decoded (the
facade checks this too, but a worker never trusts that), and an output
holding NaN or Infinity fails the task with a :class:`ModelError` naming the
output, since JSON cannot carry such values back to the facade.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from legacygpu.core.config import Settings
from legacygpu.core.errors import ModelError, ValidationError
from legacygpu.core.limits import check_image_header
from legacygpu.core.modelcards import ImageSpec, ModelCard, TensorSpec
from legacygpu.core.tensors import NUMPY_DTYPES, Tensor, decode_image_bytes, from_numpy, to_numpy

__all__ = ["image_to_array", "postprocess", "preprocess"]

_INK_THRESHOLD = 0.25


@functools.cache
def _max_pixels() -> int:
    """The configured pixel limit (``LEGACYGPU_MAX_IMAGE_PIXELS``), read once per process."""
    return Settings().max_image_pixels


def _crop_to_content(gray: np.ndarray) -> np.ndarray:
    """Crop a light-ink-on-dark image to its ink, padded to a centred square."""
    mask = gray > _INK_THRESHOLD * gray.max() if gray.max() > 0 else np.zeros_like(gray, bool)
    if not mask.any():
        return gray
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=crop.dtype)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    return square


def image_to_array(raw: bytes, spec: ImageSpec, max_pixels: int | None = None) -> np.ndarray:
    """One image file as a float32 array laid out for the model (batch dimension of 1)."""
    check_image_header("image", raw, max_pixels or _max_pixels())
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValidationError(f"not a readable image file: {exc}") from exc
    width, height = spec.size
    if spec.color == "grayscale":
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        if spec.invert:
            gray = 1.0 - gray
        if spec.crop_to_content:
            gray = _crop_to_content(gray)
        resized = Image.fromarray((gray * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BOX)
        pixels = (np.asarray(resized, dtype=np.float32) / 255.0)[:, :, None]
    else:
        resized = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32) / 255.0
        if spec.invert:
            pixels = 1.0 - pixels
        if spec.color == "bgr":
            pixels = pixels[:, :, ::-1]
    low, high = spec.scale
    pixels = low + pixels * (high - low)
    if spec.mean is not None:
        pixels = pixels - np.asarray(spec.mean, dtype=np.float32)
    if spec.std is not None:
        pixels = pixels / np.asarray(spec.std, dtype=np.float32)
    if spec.layout == "flat":
        return pixels.reshape(1, -1).astype(np.float32)
    if spec.layout == "NCHW":
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]).astype(np.float32)
    return pixels[None].astype(np.float32)


def _to_model_array(tensor: Tensor, spec: TensorSpec | None) -> np.ndarray:
    if tensor.datatype == "BYTES":
        if spec is None or spec.image is None:
            raise ValidationError(f"input {tensor.name!r}: BYTES is only accepted for image inputs")
        return image_to_array(decode_image_bytes(tensor), spec.image)
    array = to_numpy(tensor)
    if spec is not None and spec.datatype in NUMPY_DTYPES:
        array = array.astype(NUMPY_DTYPES[spec.datatype], copy=False)
    return array


def preprocess(card: ModelCard, inputs: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Model feeds from request tensors (as :func:`validate_inputs` returns them), converted as the card says."""
    return {tensor.name: _to_model_array(tensor, card.input(tensor.name)) for tensor in inputs}


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def postprocess(card: ModelCard, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The task result: every output as a tensor, plus ``top_k`` for classifiers.

    ``top_k`` is for the first item of the batch; ``top_k_batch`` holds one
    list per item when the batch is larger than one.
    """
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise ModelError(
                f"model {card.name!r} produced {bad} non-finite value(s) (NaN or Infinity) in output {name!r} "
                f"of {array.size}; check the inputs are in the range the model was trained on"
            )
    result: dict[str, Any] = {"outputs": [from_numpy(name, value) for name, value in outputs.items()]}
    post = card.postprocess
    if post.top_k <= 0 or not post.output:
        return result
    if post.output not in outputs:
        raise ValidationError(f"model card names output {post.output!r}, which the model does not produce")
    scores = np.asarray(outputs[post.output], dtype=np.float64)
    scores = scores.reshape(1, -1) if scores.ndim == 1 else scores.reshape(scores.shape[0], -1)
    if post.softmax:
        scores = _softmax(scores)
    batch = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[: post.top_k]
        batch.append(
            [
                {"label": post.labels[i] if i < len(post.labels) else str(i), "index": int(i), "score": float(row[i])}
                for i in best
            ]
        )
    result["top_k"] = batch[0]
    if len(batch) > 1:
        result["top_k_batch"] = batch
    return result
