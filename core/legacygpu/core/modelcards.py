"""Model cards and the model repository.

A model repository is a folder with one sub-folder per model::

    <root>/digits/model.onnx
    <root>/digits/card.yaml

The card says what the model takes and gives, and how to turn what a person
has (an image file, a ``.npy`` array, a JSON tensor) into what the model
wants, and the raw outputs back into something readable (softmax, top-k
with labels). Cards are plain data: this module reads and writes them; the
numeric pre/post-processing lives with the worker
(:mod:`legacygpu.worker.processing`), so the API can validate requests
without importing any inference library.

Cards are read on every task (the facade validates against one, the worker
runs by one), so :func:`load_card` parses each file once and keeps the
result, keyed by the file's path and its ``(mtime, size, inode)``: a card
edited or replaced in place is read again on its next use, an unchanged one
costs a ``stat``. YAML is parsed with libyaml's C loader when PyYAML was
built with it. A cached card is shared between callers: treat it as
read-only (``model_copy`` it to change it).

Everything a card names stays inside its model's folder: ``file`` is a
plain file name (no ``/``, no ``..``, not absolute), and model names are
checked before any path is built from them.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from legacygpu.core.errors import UnknownModelError, ValidationError

__all__ = [
    "CARD_FILE",
    "DATATYPES",
    "MODEL_FILE",
    "DynamicBatchingSpec",
    "ImageSpec",
    "ModelCard",
    "ModelRepository",
    "PostprocessSpec",
    "QueuePolicySpec",
    "TensorSpec",
    "check_model_name",
]

CARD_FILE = "card.yaml"
MODEL_FILE = "model.onnx"
DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML has it (several times faster), else the pure-Python one."""
_NAME_RULE = "1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit"


def check_model_name(name: str) -> str:
    """``name`` if it can name a model (and so a folder); :class:`ValidationError` saying the rule otherwise."""
    if not _NAME.match(name) or ".." in name:
        raise ValidationError(f"model name {name!r} is not valid: use {_NAME_RULE}, e.g. 'digits' or 'resnet-18'")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageSpec(_Strict):
    """How an image file becomes this input tensor."""

    color: Literal["grayscale", "rgb", "bgr"] = "rgb"
    size: tuple[int, int] = Field(description="Target (width, height) in pixels.")
    crop_to_content: bool = Field(
        False, description="Crop to the bounding box of the ink before resizing (for drawn digits)."
    )
    invert: bool = Field(False, description="Invert intensities (dark ink on light paper -> light on dark).")
    scale: tuple[float, float] = Field((0.0, 1.0), description="Map pixel values 0..1 onto this range.")
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted after scaling.")
    std: list[float] | None = Field(None, description="Per-channel std divided after the mean.")
    layout: Literal["NCHW", "NHWC", "flat"] = "NCHW"


class TensorSpec(_Strict):
    """One model input or output."""

    name: str
    datatype: str = "FP32"
    shape: list[int] = Field(default_factory=list, description="-1 marks a dynamic dimension.")
    image: ImageSpec | None = Field(None, description="Accept an image file for this input.")

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"datatype must be one of {', '.join(DATATYPES)}, not {value!r}")
        return value


class PostprocessSpec(_Strict):
    """How raw outputs become a readable result."""

    output: str | None = Field(None, description="The output holding class scores.")
    softmax: bool = False
    top_k: int = Field(0, ge=0, description="Report the k best classes; 0 turns it off.")
    labels: list[str] = Field(default_factory=list)


class QueuePolicySpec(_Strict):
    """How long a real-time request may wait and how many may wait (Triton's ``default_queue_policy``)."""

    max_queue_size: int = Field(0, ge=0, description="Requests that may wait; more are refused (503). 0: no limit.")
    default_timeout_microseconds: int = Field(
        0, ge=0, description="A request still queued after this long is refused (503). 0: no limit."
    )
    allow_timeout_override: bool = Field(True, description="Whether a request's own `timeout` parameter applies.")


class DynamicBatchingSpec(_Strict):
    """How the worker groups real-time requests into batches (Triton's ``dynamic_batching``)."""

    preferred_batch_size: list[int] = Field(
        default_factory=list, description="Batch sizes to run as soon as they are reached, without waiting."
    )
    max_queue_delay_microseconds: int = Field(
        0, ge=0, description="How long the oldest request may wait for others to join its batch."
    )
    priority_levels: int = Field(0, ge=0, description="Number of priority levels (1 is the highest); 0: one level.")
    default_priority_level: int = Field(0, ge=0, description="Level of a request that names none; 0: the lowest.")
    default_queue_policy: QueuePolicySpec = Field(default_factory=QueuePolicySpec)


class ModelCard(_Strict):
    """Everything the platform knows about one model."""

    name: str
    description: str = ""
    file: str = MODEL_FILE
    task: str = "generic"
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    metrics: dict[str, float | str] = Field(default_factory=dict)
    max_batch_size: int = Field(
        0, ge=0, description="Largest batch the real-time path runs at once (the first dimension); 0: no batching."
    )
    dynamic_batching: DynamicBatchingSpec | None = Field(
        None, description="Group concurrent real-time requests into batches (needs max_batch_size > 0)."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value) or ".." in value:
            raise ValueError(f"model name {value!r} must be {_NAME_RULE}")
        return value

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", "..") or Path(value).name != value:
            raise ValueError(
                f"file {value!r} must be a plain file name inside the model's folder (like {MODEL_FILE!r}), "
                "not a path"
            )
        return value

    def input(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)


class ModelRepository:
    """A folder of models, each with its card."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CARD_FILE).is_file())

    def list(self) -> list[ModelCard]:
        return [self.get(name) for name in self.names()]

    def get(self, name: str) -> ModelCard:
        card_path = self.root / name / CARD_FILE
        if not _NAME.match(name) or ".." in name or not card_path.is_file():
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"unknown model {name!r} (models in the repository: {known})")
        return load_card(card_path)

    def model_path(self, name: str, card: ModelCard | None = None) -> Path:
        """The model file of ``name``; pass ``card`` when it was just read, to spare reading it again."""
        card = card or self.get(name)
        return self.root / name / card.file

    def add(self, card: ModelCard, onnx_file: Path, *, replace: bool = False) -> Path:
        """Copy ``onnx_file`` into the repository under ``card.name`` and write its card."""
        onnx_file = Path(onnx_file)
        check_model_name(card.name)
        if not onnx_file.is_file():
            raise ValidationError(f"model file {onnx_file} does not exist")
        folder = self.root / card.name
        if folder.exists() and not replace:
            raise ValidationError(f"model {card.name!r} already exists; add it with --replace to overwrite it")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / card.file
        if onnx_file.resolve() != target.resolve():
            shutil.copyfile(onnx_file, target)
        save_card(card, folder / CARD_FILE)
        return folder


_FileKey = tuple[int, int, int]
_cache: dict[Path, tuple[_FileKey, ModelCard]] = {}
_cache_lock = threading.Lock()


def _file_key(stat: os.stat_result) -> _FileKey:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def load_card(path: Path) -> ModelCard:
    """Read a card from YAML; a :class:`ValidationError` says what is wrong with it.

    Parsed once per version of the file (see the module docstring); the
    card returned is shared, so do not change it.
    """
    path = Path(path).absolute()
    try:
        key = _file_key(path.stat())
        with _cache_lock:
            cached = _cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        raw = yaml.load(path.read_bytes(), Loader=_LOADER)  # a safe loader, C or Python
        card = ModelCard.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(f"cannot read model card {path}: {exc}") from exc
    except ValueError as exc:
        raise ValidationError(f"invalid model card {path}: {exc}") from exc
    with _cache_lock:
        _cache[path] = (key, card)
    return card


def save_card(card: ModelCard, path: Path) -> None:
    data = card.model_dump(mode="json", exclude_defaults=False)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
