"""The onnxruntime (CPU) backend, and the input checks every backend shares.

onnxruntime's CPU execution provider is the reference every other backend is
measured against, and the fallback that runs whatever the OpenCL executor
cannot. Loading wraps onnxruntime's own error text in
:class:`~legacygpu.core.errors.ModelError`; every ``run`` first checks the
feeds against the model's declared inputs (:func:`validate_feeds`) so a wrong
name, rank, fixed dimension or dtype is a
:class:`~legacygpu.core.errors.ValidationError` naming the input, not an
onnxruntime stack trace.

:class:`InputSpec` and :func:`validate_feeds` are reused by the OpenCL
backend so both backends refuse the same inputs with the same words.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from legacygpu.core.errors import ModelError, ValidationError
from legacygpu.worker.backends.runtime import BackendInfo

__all__ = [
    "CONCURRENT_RUNS",
    "InputSpec",
    "OnnxRuntimeBackend",
    "OnnxRuntimeModel",
    "cpu_name",
    "session_options",
    "validate_feeds",
]

log = logging.getLogger(__name__)

# onnxruntime's type strings ("tensor(float)") to numpy dtypes.
_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class InputSpec:
    """One declared model input: a dimension is an int when fixed, else None."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


def ort_dtype(type_str: str) -> np.dtype:
    """Map onnxruntime's type string to numpy; unknown types raise ModelError."""
    try:
        return _ORT_TYPES[type_str]
    except KeyError as exc:
        raise ModelError(f"input type {type_str} is not supported") from exc


def _fixed(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def validate_feeds(
    specs: Sequence[InputSpec], feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Check feeds against the declared inputs; return them cast to the declared dtypes.

    A dtype of the same kind (float64 for float32, int32 for int64) is cast;
    a different kind (a float for an integer input, strings) is refused.
    """
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(feeds) - set(by_name))
    if unknown:
        raise ValidationError(
            f"unknown input(s) {unknown}; the model expects {[s.name for s in specs]}"
        )
    missing = [s.name for s in specs if s.name not in feeds]
    if missing:
        raise ValidationError(f"missing input(s) {missing}; expected {[s.describe() for s in specs]}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.dtype.kind not in "biuf" or (
            arr.dtype != spec.dtype and not np.can_cast(arr.dtype, spec.dtype, casting="same_kind")
        ):
            raise ValidationError(
                f"input {spec.name!r} has dtype {arr.dtype.name}; expected {spec.dtype.name}"
            )
        if arr.ndim != len(spec.shape):
            raise ValidationError(
                f"input {spec.name!r} has shape {list(arr.shape)} (rank {arr.ndim}); "
                f"expected {spec.describe()}"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if want is not None and got != want:
                raise ValidationError(
                    f"input {spec.name!r} has size {got} on axis {axis}; expected {spec.describe()}"
                )
        out[spec.name] = np.ascontiguousarray(arr, dtype=spec.dtype)
    return out


def session_options(threads: int | None = None) -> Any:
    """onnxruntime's session options for a serving process on a small CPU host.

    * The intra-op pool's threads block when idle instead of spinning
      (``session.intra_op.allow_spinning`` = ``"0"``, the same for inter-op).
      onnxruntime's default lets them spin for a while after every run; on a
      host with 2 cores, two spinning threads take the CPU from the HTTP
      and gRPC servers of the same process, which then answer late: throughput
      fell as clients were added. A run pays a wake-up instead (microseconds).
    * Sequential execution (one operator at a time, each using the intra-op
      pool): a model's branches rarely run in parallel profitably on few cores.
    * ``intra_op_num_threads``: ``threads`` if given, else onnxruntime's
      default (one per physical core), so a large batch still uses every core.
    """
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def _source_arg(source: Path | bytes) -> str | bytes:
    return str(source) if isinstance(source, Path) else source


def cpu_name() -> str:
    """The CPU's model name, for heartbeats."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class OnnxRuntimeModel:
    """A model loaded into an onnxruntime CPU session."""

    def __init__(self, session: object, path: Path) -> None:
        self._session = session
        self.path = path
        self.inputs: list[InputSpec] = [
            InputSpec(i.name, tuple(_fixed(d) for d in i.shape), ort_dtype(i.type))
            for i in session.get_inputs()  # type: ignore[attr-defined]
        ]
        self.input_names = [s.name for s in self.inputs]
        self.output_names = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = validate_feeds(self.inputs, feeds)
        try:
            results = self._session.run(self.output_names, checked)  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own pybind classes
            raise ModelError(f"{self.path.name}: {exc}") from exc
        return dict(zip(self.output_names, results, strict=True))


CONCURRENT_RUNS = 2
"""Runs of one worker's sessions that go at once, by default (:class:`OnnxRuntimeBackend`)."""


class OnnxRuntimeBackend:
    """Runs models on onnxruntime's CPU execution provider.

    Two runs go at once by default (``concurrent_runs``; an onnxruntime session takes concurrent
    calls). One run alone keeps a CPU's cores only partly busy: each operator splits its work over
    the intra-op threads and waits for the last of them, and a thread that the host gives another
    process, such as the server's own event loop, stalls the others; a large batch runs no faster
    per item, its activations outgrowing the caches. A second run fills those gaps, so the serving
    batcher runs two (smaller) batches side by side. A lone request still gets every intra-op
    thread. ``concurrent_runs=1`` runs one at a time (``LEGACYGPU_CONCURRENT_RUNS``, read by
    :func:`~legacygpu.worker.backends.create_backend`): each run holds its own activations, so two
    runs at once need about twice the peak activation memory of one.
    """

    name = "onnxruntime"

    def __init__(self, threads: int | None = None, concurrent_runs: int = CONCURRENT_RUNS) -> None:
        if concurrent_runs < 1:
            raise ValidationError(f"concurrent_runs must be at least 1, not {concurrent_runs}")
        self._threads = threads
        self.concurrent_runs = concurrent_runs

    def info(self) -> BackendInfo:
        import onnxruntime

        return BackendInfo(
            backend=self.name,
            device=cpu_name(),
            device_type="cpu",
            extra={"onnxruntime": onnxruntime.__version__},
        )

    def session(self, source: Path | bytes) -> object:
        """An onnxruntime CPU session for a path or serialized model bytes."""
        import onnxruntime

        return onnxruntime.InferenceSession(_source_arg(source), session_options(self._threads),
                                            providers=["CPUExecutionProvider"])

    def load(self, path: Path) -> OnnxRuntimeModel:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        try:
            session = self.session(path)
        except Exception as exc:  # onnxruntime's Fail/InvalidProtobuf/... classes
            raise ModelError(f"cannot load {path.name}: {exc}") from exc
        model = OnnxRuntimeModel(session, path)
        log.info("loaded %s on onnxruntime: inputs %s", path.name, [s.describe() for s in model.inputs])
        return model
