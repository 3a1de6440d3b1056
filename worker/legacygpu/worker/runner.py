"""Runs one task: model card → pre-processing → backend → post-processing.

Shared by the local worker process and the Kubernetes worker loop. Loaded
models are cached per name and file modification time, so a model replaced
in the repository is reloaded on its next task.

How many runs go at once is the backend's ``concurrent_runs``: the OpenCL
device runs one at a time, loading included, while onnxruntime's sessions take
concurrent calls, and two runs on a CPU keep its cores busier than one run's
intra-op threads do (see
:class:`~legacygpu.worker.backends.onnxruntime.OnnxRuntimeBackend`). Both workers preload the
models named in ``LEGACYGPU_PRELOAD_MODELS`` (comma-separated; the operator
sets it from the cluster's ``spec.models``) before taking their first task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from legacygpu.core.errors import ModelError, ValidationError
from legacygpu.core.modelcards import ModelCard, ModelRepository
from legacygpu.core.tensors import validate_inputs
from legacygpu.worker.backends.runtime import InferenceBackend, LoadedModel
from legacygpu.worker.processing import postprocess, preprocess

__all__ = ["PRELOAD_ENV", "TaskRunner", "preload_from_env"]

PRELOAD_ENV = "LEGACYGPU_PRELOAD_MODELS"

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class TaskRunner:
    """Turns (model, inputs) into a result with one backend."""

    def __init__(self, repository: ModelRepository, backend: InferenceBackend, max_cached_models: int = 4) -> None:
        self.repository = repository
        self.backend = backend
        self.max_cached_models = max_cached_models
        self._cache: dict[str, tuple[float, LoadedModel]] = {}
        self._lock = threading.Lock()
        """Held to load or drop a model, and for a whole run when runs go one at a time."""
        self.concurrent_runs = backend.concurrent_runs
        """Runs that may go at once (the backend's ``concurrent_runs``)."""
        self._slots = threading.BoundedSemaphore(self.concurrent_runs)
        self.last_compute_ms: float | None = None
        self.model_errors: dict[str, str] = {}
        """Why a model meant to be served is not (a failed preload or fetch), by name; published by workers."""

    def loaded_models(self) -> list[str]:
        return sorted(self._cache)

    def is_loaded(self, name: str) -> bool:
        """Whether the repository's current file of ``name`` is loaded (a replaced file is not)."""
        cached = self._cache.get(name)
        if cached is None:
            return False
        try:
            return cached[0] == self.repository.model_path(name).stat().st_mtime
        except (OSError, ValidationError):
            return False

    def load(self, name: str) -> None:
        """Load (or reload, if its file changed) ``name`` now; raises as a task would."""
        with self._lock:
            self._model(name)

    def unload(self, name: str) -> bool:
        """Drop ``name`` from the loaded models; returns whether it was loaded."""
        with self._lock:
            return self._cache.pop(name, None) is not None

    def _model(self, name: str, path: Path | None = None) -> LoadedModel:
        path = path or self.repository.model_path(name)
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            raise ModelError(f"model {name!r}: cannot read {path}: {exc}") from exc
        cached = self._cache.get(name)
        if cached and cached[0] == mtime:
            return cached[1]
        log.info("loading model %s from %s", name, path)
        model = self.backend.load(path)
        if len(self._cache) >= self.max_cached_models:
            self._cache.pop(next(iter(self._cache)))
        self._cache[name] = (mtime, model)
        return model

    def preload(self, names: list[str]) -> list[str]:
        """Load ``names`` ahead of their first task; returns those that loaded.

        A model that fails to load is logged, not raised: its tasks will fail
        with the loader's message, and the other models still serve.
        """
        loaded = []
        for name in (n.strip() for n in names):
            if not name:
                continue
            try:
                with self._lock:
                    self._model(name)
                loaded.append(name)
                self.model_errors.pop(name, None)
            except (ModelError, ValidationError) as exc:
                log.warning("could not preload model %s: %s", name, exc)
                self.model_errors.setdefault(name, str(exc))  # a failed fetch's reason stays the one shown
        return loaded

    def run(self, model: str, inputs: list[dict[str, Any]], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The result of running ``model`` on ``inputs``.

        Raises ``UnknownModelError`` or ``ValidationError`` for bad requests
        (permanent) and ``ModelError`` when the model fails to load or run.
        """
        card = self.repository.get(model)
        feeds = preprocess(card, validate_inputs(card, inputs))
        with self._running(model, self.repository.model_path(model, card)) as loaded:
            result, self.last_compute_ms = _timed_run(model, loaded, feeds)
        return _result(card, model, result)

    def try_run(self, model: str, inputs: list[dict[str, Any]],
                parameters: dict[str, Any] | None = None) -> tuple[dict[str, Any], float] | None:
        """:meth:`run`, and its model time in ms, if the model is loaded and a run can start at once; else None.

        For a caller that must not block (the serving event loop), on the conditions of
        :meth:`try_run_feeds`; raises as :meth:`run` does. The inputs are checked and prepared before, and the
        result formed after, the run slot (and the lock) are held, as in :meth:`run`.
        """
        card = self.repository.get(model)
        feeds = preprocess(card, validate_inputs(card, inputs))
        ran = self._try(model, self.repository.model_path(model, card), lambda loaded: _timed_run(model, loaded, feeds))
        if ran is None:
            return None
        outputs, compute_ms = ran
        return _result(card, model, outputs), compute_ms

    def run_feeds(self, model: str, feeds: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
        """Run ``model`` on feeds already in the model's form (no card processing): the real-time path.

        ``path`` is the model file when the caller has read the card already. Shares the loaded
        models, the lock and the run slots with :meth:`run`; raises as it does.
        """
        with self._running(model, path) as loaded:
            return _run(model, loaded, feeds)

    def try_run_feeds(self, model: str, feeds: dict[str, Any], path: Path | None = None) -> dict[str, Any] | None:
        """:meth:`run_feeds` if it can start at once, else None: other runs hold the device (every run
        slot, or the lock: a load, or the one run of a backend that runs one at a time), or the
        model is not loaded (or its file changed, so it must be loaded again). For callers that must
        not block (the serving event loop)."""
        return self._try(model, path, lambda loaded: _run(model, loaded, feeds))

    def _try(self, model: str, path: Path | None, run: Callable[[LoadedModel], _T]) -> _T | None:
        """``run`` on the loaded model if a run can start at once (a run slot and the lock free, the model loaded
        from its current file), else None; with the lock held throughout when runs go one at a time."""
        if not self._slots.acquire(blocking=False):
            return None
        try:
            if not self._lock.acquire(blocking=False):
                return None
            try:
                loaded = self._current(model, path)
                if loaded is not None and self.concurrent_runs == 1:
                    return run(loaded)  # one run at a time: under the lock, as in run
            finally:
                self._lock.release()
            return None if loaded is None else run(loaded)
        finally:
            self._slots.release()

    def _current(self, model: str, path: Path | None) -> LoadedModel | None:
        """The loaded model if its file is still the one loaded, else None (it must be loaded again)."""
        path = path or self.repository.model_path(model)
        cached = self._cache.get(model)
        try:
            if cached is None or cached[0] != path.stat().st_mtime:
                return None
        except OSError:
            return None
        return cached[1]

    @contextlib.contextmanager
    def _running(self, model: str, path: Path | None = None) -> Iterator[LoadedModel]:
        """The model, loaded if need be, held for one run: with the lock throughout when runs go one at a
        time (nothing else touches the device meanwhile), else with one of the run slots."""
        if self.concurrent_runs == 1:
            with self._lock:
                yield self._model(model, path)
            return
        with self._slots:
            with self._lock:
                loaded = self._model(model, path)
            yield loaded


def _timed_run(model: str, loaded: LoadedModel, feeds: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The model's outputs, and the ms it took."""
    started = time.perf_counter()
    outputs = _run(model, loaded, feeds)
    return outputs, (time.perf_counter() - started) * 1000


def _result(card: ModelCard, model: str, outputs: dict[str, Any]) -> dict[str, Any]:
    result = postprocess(card, outputs)
    result["model"] = model
    return result


def _run(model: str, loaded: LoadedModel, feeds: dict[str, Any]) -> dict[str, Any]:
    try:
        return loaded.run(feeds)
    except (ModelError, ValidationError):
        raise
    except Exception as exc:  # a backend must not take the worker down
        raise ModelError(f"model {model!r} failed: {exc}") from exc


def preload_from_env(runner: TaskRunner) -> list[str]:
    """Preload what :data:`PRELOAD_ENV` names, if anything."""
    names = os.environ.get(PRELOAD_ENV, "")
    return runner.preload(names.split(",")) if names.strip() else []
