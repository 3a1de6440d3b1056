"""The seam between a worker and whatever runs the model.

A backend turns an ONNX file into a :class:`LoadedModel`; a loaded model maps
named input arrays to named output arrays. The worker never imports a backend
module directly: it asks :func:`legacygpu.worker.backends.create_backend` for
one by name (``onnxruntime``, ``opencl`` or ``auto``).

Contract for implementers:

* ``load`` raises :class:`legacygpu.core.errors.ModelError` with the loader's
  own words when the file cannot be loaded (missing, truncated, malformed,
  unsupported); it never lets a third-party exception escape.
* ``run`` takes float/int arrays keyed by the model's input names (the batch
  dimension may vary between calls) and returns every model output by name.
  It raises ``ModelError`` for failures inside the model and
  :class:`legacygpu.core.errors.ValidationError` for inputs of the wrong
  name, shape or dtype.
* A loaded model is called from at most ``concurrent_runs`` threads at a
  time (a backend's required attribute, at least 1). The runner loads and
  drops models while runs go on only when that is above 1.

Example::

    backend = create_backend("onnxruntime")
    model = backend.load(Path("digits/model.onnx"))
    outputs = model.run({"input": np.zeros((1, 64), np.float32)})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["BackendInfo", "InferenceBackend", "LoadedModel"]


@dataclass(frozen=True)
class BackendInfo:
    """What a backend runs on, reported in worker heartbeats."""

    backend: str
    device: str
    device_type: str = "cpu"
    """``gpu`` or ``cpu``."""
    vram_mib: int = 0
    gpu_family: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class LoadedModel(Protocol):
    """A model ready to run."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class InferenceBackend(Protocol):
    """Loads ONNX models for one device."""

    name: str
    concurrent_runs: int
    """How many runs may go at once, of any of its loaded models (at least 1; every backend says)."""

    def info(self) -> BackendInfo: ...

    def load(self, path: Path) -> LoadedModel: ...
