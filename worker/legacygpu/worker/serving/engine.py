"""The real-time inference engine behind the worker's Open Inference Protocol servers.

:class:`ServingEngine` answers what REST and gRPC both ask: is the server
live and ready, is a model ready, what a model takes and gives, and
inference. It shares the worker's :class:`~legacygpu.worker.runner.TaskRunner`
(its model repository, its loaded models, their lock and run slots), so a
model loaded for tasks serves real-time requests too and the device runs no
more at once than its backend takes (``concurrent_runs``). In local mode the
runner exists only once the worker has registered (the facade names the
repository), so the engine takes a function returning
the runner, or None while there is none: the server is then live but not
ready. ``readiness`` may add a condition to server readiness alone (in a
pod: the task watch is open), without refusing inference meanwhile.

A request is checked against the model card (every input present and known,
datatype and shape as the card says, or ``BYTES`` images for an image input,
which the card's pre-processing turns into the model's tensor), then queued
on the model's :class:`~legacygpu.worker.serving.batching.ModelScheduler`.
Outputs are the model's raw outputs (the card's softmax and top-k are the
task path's), the requested ones or all. Cards are read once and re-read
only when the file changes.

Versions and readiness (Triton's repository extension): a model serves its
live version (:mod:`legacygpu.core.modelversions`); a request naming
another version is 404. A model is ready only while this worker has its
current file loaded: after :meth:`ServingEngine.load`, a preload or a first
inference (which still loads a model on demand). :meth:`ServingEngine.unload`
drops it and refuses its inferences (503) until it is loaded again; the
task path is not affected. Everything runs on the serving event loop except
image decoding and the model itself, which go to threads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from legacygpu.core.errors import LegacyGPUError, UnknownModelError
from legacygpu.core.modelcards import CARD_FILE, ModelCard, TensorSpec
from legacygpu.core.modelversions import VERSION_FILE, ModelVersions
from legacygpu.worker.processing import image_to_array
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving.batching import ModelScheduler, Timings
from legacygpu.worker.serving.codec import InferInput, InferRequest
from legacygpu.worker.serving.errors import BadRequest, ModelNotFound, QueueFull, ServingError, Unavailable, from_core
from legacygpu.worker.serving.metrics import ServingMetrics

__all__ = ["EXTENSIONS", "MODEL_VERSION", "ServingEngine"]

MODEL_VERSION = "1"
"""The version of a model added without versions."""
EXTENSIONS = ["binary_tensor_data"]
_DEVICE_THREADS = 8
"""Threads that run models, loads and unloads (made as needed); the runner bounds how many run at once."""


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except (OSError, ValueError):
        return -1


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


def _matches(shape: tuple[int, ...], spec: list[int]) -> bool:
    return len(shape) == len(spec) and all(d < 0 or s == d for s, d in zip(shape, spec, strict=True))


class ServingEngine:
    """Models by name, each with its scheduler; used from one event loop."""

    def __init__(self, runner: TaskRunner | Callable[[], TaskRunner | None], *,
                 metrics: ServingMetrics | None = None, server_name: str = "legacygpu",
                 server_version: str = "", readiness: Callable[[], bool] | None = None) -> None:
        self._runner = runner if callable(runner) and not isinstance(runner, TaskRunner) else (lambda: runner)
        self._readiness = readiness
        self.metrics = metrics or ServingMetrics()
        self.server_name = server_name
        self.server_version = server_version
        self._cards: dict[str, tuple[tuple[int, int], ModelCard, str]] = {}
        self._files: dict[str, tuple[Path, str, str]] = {}  # model -> (repository root, card path, version path)
        self._schedulers: dict[str, ModelScheduler] = {}
        self._unloaded: set[str] = set()
        self.in_flight = 0
        """Requests between the start and the end of :meth:`infer` (decoding, queued, running)."""
        self.last_request = -1e9
        """``time.monotonic()`` when :meth:`infer` last started (a draining server waits for quiet)."""
        self._device = ThreadPoolExecutor(_DEVICE_THREADS, thread_name_prefix="serving-device")
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="serving-decode")

    # server and model state ------------------------------------------------------------------

    def runner(self) -> TaskRunner:
        runner = self._runner()
        if runner is None:
            raise Unavailable("the worker has no model repository yet (it is registering)", retry_after=1)
        return runner

    def ready(self) -> bool:
        return self._runner() is not None and (self._readiness is None or self._readiness())

    def metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": self.server_version, "extensions": EXTENSIONS}

    def live_version(self, model: str) -> str:
        try:
            return self._current(model)[1]
        except (LegacyGPUError, ServingError):
            return MODEL_VERSION

    def _current(self, model: str) -> tuple[ModelCard, str]:
        """The model's card and live version, read again only when its card or version file changed.

        Two ``stat`` calls per request and no reads: the version file is replaced after the card when a
        version is made live, so a change of either is seen.
        """
        runner = self.runner()
        files = self._files.get(model)
        if files is None or files[0] != runner.repository.root:
            folder = runner.repository.root / model
            files = self._files[model] = (runner.repository.root, str(folder / CARD_FILE), str(folder / VERSION_FILE))
        stamp = (_mtime(files[1]), _mtime(files[2]))
        cached = self._cards.get(model)
        if cached is not None and cached[0] == stamp and stamp[0] >= 0:
            return cached[1], cached[2]
        try:
            card = runner.repository.get(model)
        except UnknownModelError as exc:
            raise ModelNotFound(str(exc)) from exc
        except LegacyGPUError as exc:
            raise from_core(exc) from exc
        live = ModelVersions(runner.repository).live(model) or MODEL_VERSION
        self._cards[model] = (stamp, card, live)
        return card, live

    def card(self, model: str, version: str = "") -> ModelCard:
        """The model's card; :class:`ModelNotFound` for an unknown model or a version that is not live."""
        return self._live(model, version)[0]

    def _live(self, model: str, version: str) -> tuple[ModelCard, str]:
        """:meth:`card`, and the live version."""
        card, live = self._current(model)
        if version not in ("", live):
            stored = ModelVersions(self.runner().repository).versions(model)
            if version in stored:
                raise ModelNotFound(f"model {model!r} version {version!r} is stored but not loaded (version {live} "
                                    f"is; load another with POST /v2/repository/models/{model}/load)")
            raise ModelNotFound(f"model {model!r} has no version {version!r} (its versions: "
                                f"{', '.join(stored) or live})")
        return card, live

    def model_ready(self, model: str, version: str = "") -> bool:
        """Whether this worker has the model's live version loaded (and it was not unloaded)."""
        try:
            self.card(model, version)
            return model not in self._unloaded and self.runner().is_loaded(model)
        except ServingError:
            return False

    async def load(self, model: str) -> None:
        """Load the model's live version now (on the device thread); :class:`ServingError` if it cannot."""
        self.card(model)
        runner = self.runner()
        try:
            await asyncio.get_running_loop().run_in_executor(self._device, runner.load, model)
        except LegacyGPUError as exc:
            raise from_core(exc) from exc
        self._unloaded.discard(model)

    async def unload(self, model: str) -> None:
        """Drop the model and refuse its inferences until it is loaded again."""
        self.card(model)
        self._unloaded.add(model)
        await asyncio.get_running_loop().run_in_executor(self._device, self.runner().unload, model)

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index of this worker: every model, its live version and its state."""
        entries = []
        for model in self.runner().repository.names():
            ready = self.model_ready(model)
            reason = "" if ready else ("unloaded" if model in self._unloaded else "not loaded")
            entries.append({"name": model, "version": self.live_version(model),
                            "state": "READY" if ready else "UNAVAILABLE", "reason": reason})
        return entries

    def model_metadata(self, model: str, version: str = "") -> dict[str, Any]:
        card = self.card(model, version)

        def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": s.shape} for s in specs]

        return {
            "name": model,
            "versions": [self.live_version(model)],
            "platform": f"{self.runner().backend.name}_onnx",
            "inputs": tensors(card.inputs),
            "outputs": tensors(card.outputs),
        }

    # inference ---------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> tuple[dict[str, np.ndarray], Timings, str]:
        """The requested outputs of ``request``, where its time went, and the model version that answered (the
        live one, looked up once per request); raises a :class:`ServingError`."""
        self.in_flight += 1  # read by the Kubernetes worker's stats, for the autoscaler
        self.last_request = time.monotonic()
        try:
            return await self._infer(request)
        finally:
            self.in_flight -= 1

    async def _infer(self, request: InferRequest) -> tuple[dict[str, np.ndarray], Timings, str]:
        model = request.model
        card, live = self._live(model, request.version)
        if model in self._unloaded:
            raise Unavailable(f"model {model!r} is unloaded; load it with POST /v2/repository/models/{model}/load")
        try:
            if any(i.datatype == "BYTES" for i in request.inputs):
                loop = asyncio.get_running_loop()
                feeds = await loop.run_in_executor(self._decode, self._feeds, card, request.inputs)
            else:
                feeds = self._feeds(card, request.inputs)
            size = self._batch_size(card, feeds)
            wanted = self._requested(card, request)
        except BadRequest:
            self.metrics.failure.labels(model, "bad_request").inc()
            raise
        scheduler = self._scheduler(model, card)
        try:
            outputs, timings = await scheduler.infer(feeds, size=size, priority=request.priority,
                                                     timeout_us=request.timeout_us)
        except QueueFull:
            self.metrics.failure.labels(model, "queue_full").inc()
            raise
        except BadRequest:
            self.metrics.failure.labels(model, "bad_request").inc()
            raise
        except Unavailable:
            raise  # timeouts are counted by the scheduler
        except ServingError:
            self.metrics.failure.labels(model, "model_error").inc()
            raise
        if wanted is not None:
            missing = [name for name in wanted if name not in outputs]
            if missing:
                self.metrics.failure.labels(model, "bad_request").inc()
                raise BadRequest(f"model {model!r} has no output {missing[0]!r} (its outputs: {', '.join(outputs)})")
            outputs = {name: outputs[name] for name in wanted}
        m = self.metrics
        m.success.labels(model).inc()
        m.queue_duration.labels(model).observe(timings.queue)
        m.compute_input.labels(model).observe(timings.compute_input)
        m.compute_infer.labels(model).observe(timings.compute_infer)
        m.compute_output.labels(model).observe(timings.compute_output)
        return outputs, timings, live

    async def close(self) -> None:
        for scheduler in self._schedulers.values():
            await scheduler.close()
        self._device.shutdown(wait=False, cancel_futures=True)
        self._decode.shutdown(wait=False, cancel_futures=True)

    # helpers -------------------------------------------------------------------------------------

    def _scheduler(self, model: str, card: ModelCard) -> ModelScheduler:
        scheduler = self._schedulers.get(model)
        if scheduler is None:
            runner = self.runner()

            def execute(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                try:
                    return runner.run_feeds(model, feeds, model_file())
                except LegacyGPUError as exc:
                    raise from_core(exc) from exc

            def try_execute(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
                try:
                    return runner.try_run_feeds(model, feeds, model_file())
                except LegacyGPUError as exc:
                    raise from_core(exc) from exc

            def model_file() -> Path:  # the file of the card the scheduler has (the request's, re-read if changed)
                card = self._schedulers[model].card
                cached = files.get(card.file)
                if cached is None:
                    files.clear()
                    cached = files[card.file] = runner.repository.root / model / card.file
                return cached

            files: dict[str, Path] = {}

            scheduler = self._schedulers[model] = ModelScheduler(model, card, execute, self._device, self.metrics,
                                                                 try_execute=try_execute,
                                                                 runs=runner.concurrent_runs)
        elif scheduler.card is not card:
            scheduler.configure(card)
        return scheduler

    @staticmethod
    def _feeds(card: ModelCard, inputs: list[InferInput]) -> dict[str, np.ndarray]:
        names = [i.name for i in inputs]
        if len(set(names)) != len(names):
            raise BadRequest(f"duplicate input names in {names}")
        if card.inputs:
            known = {s.name for s in card.inputs}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise BadRequest(
                    f"model {card.name!r} has no input {unknown[0]!r} (its inputs: {', '.join(sorted(known))})"
                )
            missing = sorted(known - set(names))
            if missing:
                raise BadRequest(f"model {card.name!r} needs input {missing[0]!r}")
        feeds = {}
        for tensor in inputs:
            spec = card.input(tensor.name)
            feeds[tensor.name] = tensor.array if spec is None else _to_model(tensor, spec)
        return feeds

    @staticmethod
    def _batch_size(card: ModelCard, feeds: dict[str, np.ndarray]) -> int:
        if card.max_batch_size <= 0:
            return 1
        sizes = {name: a.shape[0] if a.ndim else 0 for name, a in feeds.items()}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise BadRequest(f"model {card.name!r} batches along the first dimension; the inputs' are {sizes}")
        return next(iter(sizes.values()))

    @staticmethod
    def _requested(card: ModelCard, request: InferRequest) -> list[str] | None:
        if request.outputs is None:
            return None
        names = [o.name for o in request.outputs]
        known = {s.name for s in card.outputs}
        unknown = [n for n in names if known and n not in known]
        if unknown:
            raise BadRequest(
                f"model {card.name!r} has no output {unknown[0]!r} (its outputs: {', '.join(sorted(known))})"
            )
        return names


def _to_model(tensor: InferInput, spec: TensorSpec) -> np.ndarray:
    """One input as the model takes it, or :class:`BadRequest` naming it."""
    if tensor.datatype == "BYTES":
        if spec.image is None:
            raise BadRequest(f"input {tensor.name!r}: datatype BYTES does not match the model's {spec.datatype}")
        if tensor.array.ndim != 1 or tensor.array.size == 0:
            shape = list(tensor.array.shape)
            raise BadRequest(f"input {tensor.name!r}: images are sent as BYTES of shape [N], not {shape}")
        images = []
        for item in tensor.array:
            raw = item
            if tensor.from_json:
                try:
                    raw = base64.b64decode(item, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise BadRequest(
                        f"input {tensor.name!r}: an image in JSON is base64, and this is not: {exc}"
                    ) from exc
            try:
                images.append(image_to_array(raw, spec.image))
            except LegacyGPUError as exc:
                raise BadRequest(f"input {tensor.name!r}: {exc}") from exc
        return np.concatenate(images, axis=0)
    if tensor.datatype != spec.datatype:
        raise BadRequest(
            f"input {tensor.name!r}: datatype {tensor.datatype} does not match the model's {spec.datatype}"
        )
    if spec.shape and not _matches(tensor.array.shape, spec.shape):
        shape, wanted = list(tensor.array.shape), _shape_text(spec.shape)
        raise BadRequest(f"input {tensor.name!r}: shape {shape} does not match the model's {wanted}")
    return tensor.array
