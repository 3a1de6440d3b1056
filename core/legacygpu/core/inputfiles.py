"""Input files as request tensors, by extension: one reader for ``task submit``, ``infer`` and batch tasks.

* an image (:data:`IMAGE_SUFFIXES`) becomes one BYTES tensor holding the file, named after the
  model's image input (the worker decodes and preprocesses it as the card says);
* ``.npy`` becomes a tensor of the array's own dtype and shape;
* ``.json`` is an Open Inference Protocol request (an object with ``inputs``), a list of
  tensors, or one tensor object (its ``name`` defaults to the tensor input's name).

Anything else, or a file that does not parse, is a :class:`ValidationError` naming the file.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from legacygpu.core.errors import ValidationError

__all__ = ["IMAGE_SUFFIXES", "INPUT_SUFFIXES", "is_input_file", "read_input_file"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy", ".json")


def is_input_file(name: str) -> bool:
    """Whether ``name``'s extension is one :func:`read_input_file` reads."""
    return name.lower().endswith(INPUT_SUFFIXES)


def read_input_file(name: str, raw: bytes, *, tensor_input: str, image_input: str | None) -> list[dict[str, Any]]:
    """The tensors of the file ``name`` holding ``raw``.

    ``tensor_input`` names a ``.npy`` array's tensor (and a lone JSON tensor without a name);
    ``image_input`` an image's, None when the model takes no image.
    """
    lower = name.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        if image_input is None:
            raise ValidationError(f"{name}: this model takes no image input; send a .npy array or a JSON tensor")
        return [{"name": image_input, "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(raw).decode()]}]
    if lower.endswith(".npy"):
        import numpy as np

        from legacygpu.core.tensors import from_numpy

        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValidationError(f"{name}: not a readable .npy array: {exc}") from exc
        return [from_numpy(tensor_input, array)]
    if lower.endswith(".json"):
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"{name}: not valid JSON: {exc}") from exc
        if isinstance(loaded, dict) and "inputs" in loaded:
            loaded = loaded["inputs"]
        elif isinstance(loaded, dict):
            loaded = [{"name": tensor_input, **loaded}]
        if not isinstance(loaded, list) or not all(isinstance(t, dict) for t in loaded):
            raise ValidationError(f"{name}: expected a tensor, a list of tensors or an object with 'inputs'")
        return loaded
    raise ValidationError(f"{name}: unknown file type (expected an image {', '.join(IMAGE_SUFFIXES)}, .npy or .json)")
