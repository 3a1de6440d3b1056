"""Request limits: the bounds every input is held to before it is accepted.

One :class:`Limits` record carries the numbers; :class:`~legacygpu.core.config.Settings`
exposes each as a ``LEGACYGPU_*`` variable and builds the record, so the
facade, the worker and the docs' limits table read the same values. The
checks here are pure functions raising the core's
:class:`~legacygpu.core.errors.ValidationError` (or
:class:`~legacygpu.core.errors.PayloadTooLargeError`), whose message names
what was wrong and which setting bounds it.

Why these bounds: JSON nested deeper than the serialiser's recursion guard
(about 255 levels) is parsed fine on the way in and then cannot be written
out again, so one stored request or worker row breaks every reader of it;
an image header may promise billions of pixels in 65 bytes; and a value
outside its datatype's range, or NaN/Infinity, cannot travel as JSON to the
worker or back.
"""

from __future__ import annotations

import io
import json
import math
import struct
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from legacygpu.core.errors import PayloadTooLargeError, ValidationError

__all__ = ["Limits", "check_image_header", "check_json", "json_depth"]


class Limits(BaseModel):
    """The bounds in force; defaults are what a fresh install gets."""

    model_config = ConfigDict(frozen=True)

    max_json_depth: int = Field(32, ge=2, le=200, description="Nesting depth of `parameters` and worker `stats`.")
    max_parameters_bytes: int = Field(64 * 1024, ge=256, description="Size of a task's `parameters` as JSON.")
    max_stats_bytes: int = Field(64 * 1024, ge=256, description="Size of a worker's `stats` as JSON.")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Width x height of one image input, read from its header before decoding."
    )
    max_tensor_elements: int = Field(4 * 1024 * 1024, ge=1, description="Values in one input tensor.")


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 0, ``[]`` and ``{}`` are 1); iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_json(what: str, value: Any, *, max_depth: int, max_bytes: int, setting: str) -> None:
    """Refuse ``value`` if it nests deeper than ``max_depth``, is over ``max_bytes`` as JSON, or holds NaN/Infinity."""
    depth = json_depth(value)
    if depth > max_depth:
        raise ValidationError(
            f"{what} nests {depth} levels deep; at most {max_depth} are allowed (LEGACYGPU_MAX_JSON_DEPTH)"
        )
    try:
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")))
    except ValueError as exc:
        raise ValidationError(f"{what} holds NaN or Infinity, which JSON cannot carry: send finite numbers") from exc
    if size > max_bytes:
        raise PayloadTooLargeError(f"{what} is {size} bytes as JSON; at most {max_bytes} are allowed ({setting})")


_PNG_START = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
"""A PNG file's signature and the length and type of its first chunk, which the format requires to be IHDR."""


def _png_size(raw: bytes) -> tuple[int, int] | None:
    """A PNG's (width, height) from its IHDR chunk, or None if ``raw`` does not start as a PNG does (or
    claims a zero side, which Pillow refuses in its own words)."""
    if len(raw) < 24 or not raw.startswith(_PNG_START):
        return None
    width, height = struct.unpack_from(">II", raw, 16)
    return (width, height) if width and height else None


def check_image_header(what: str, raw: bytes, max_pixels: int) -> tuple[int, int]:
    """The image's (width, height) from its header, refused over ``max_pixels`` before any pixel is decoded.

    A PNG's header is read here (its size sits at a fixed place); any other format's by Pillow, which
    tries each format it knows on the bytes, several times the cost for the most common upload.
    """
    from PIL import Image, UnidentifiedImageError

    size = _png_size(raw)
    if size is not None and Image.MAX_IMAGE_PIXELS and size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:
        # What Pillow would refuse to open (and the decoding later, uncaught there): refused here as it did.
        raise PayloadTooLargeError(f"{what}: image is too large to decode safely: {size[0]}x{size[1]} pixels "
                                   f"exceed Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS}")
    if size is None:
        try:
            with Image.open(io.BytesIO(raw)) as image:  # reads the header only; decoding is lazy
                size = image.size
        except Image.DecompressionBombError as exc:
            raise PayloadTooLargeError(f"{what}: image is too large to decode safely: {exc}") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValidationError(f"{what}: not a readable image file ({_describe(exc)})") from exc
    width, height = size
    if width * height > max_pixels:
        side = math.isqrt(max_pixels)
        raise PayloadTooLargeError(
            f"{what}: image is {width}x{height} = {width * height} pixels; at most {max_pixels} "
            f"(about {side}x{side}) are allowed (LEGACYGPU_MAX_IMAGE_PIXELS): scale it down first"
        )
    return width, height


def _describe(exc: BaseException) -> str:
    """Pillow's message without the object reprs it sometimes embeds (``<_io.BytesIO object at 0x...>``)."""
    text = str(exc)
    return "unrecognised format" if " object at 0x" in text else text
