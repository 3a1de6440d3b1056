"""Helpers shared by the serving tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from legacygpu.core.modelcards import CARD_FILE, DynamicBatchingSpec, load_card, save_card
from legacygpu.worker.backends import BackendInfo, LoadedModel, create_backend

__all__ = ["EXAMPLES", "GatedBackend", "enable_batching"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "digits"


def enable_batching(models: Path, name: str = "digits", *, max_batch_size: int = 64, delay_us: int = 20_000,
                    **spec: object) -> None:
    """Turn on dynamic batching in a card of the repository at ``models``."""
    path = models / name / CARD_FILE
    card = load_card(path)
    card.max_batch_size = max_batch_size
    card.dynamic_batching = DynamicBatchingSpec.model_validate({"max_queue_delay_microseconds": delay_us, **spec})
    save_card(card, path)


class GatedBackend:
    """onnxruntime, one run at a time, where a run starts only once the test opens ``gate``.

    So a test holds the device busy for as long as it likes, with the real worker server, engine,
    runner and scheduler in front. ``batches`` records, for each run in order, the first value of each
    row of the model's first input (the tests send rows of one value, so a batch shows whose requests
    it held). Every run takes at least :data:`MIN_RUN_SECONDS`, so the scheduler never runs one on
    its event loop (it does for models faster than a thread hand-off), where a closed gate would stop
    the loop itself.
    """

    MIN_RUN_SECONDS = 0.005

    def __init__(self) -> None:
        self._real = create_backend("onnxruntime")
        self.name = "onnxruntime"
        self.concurrent_runs = 1
        self.gate = threading.Event()
        self.started = threading.Event()
        """Set when a run has started (and is waiting at the gate, if it is closed)."""
        self.batches: list[list[float]] = []

    def info(self) -> BackendInfo:
        return self._real.info()

    def load(self, path: Path) -> LoadedModel:
        return _GatedModel(self, self._real.load(path))


class _GatedModel:
    def __init__(self, backend: GatedBackend, real: LoadedModel) -> None:
        self._backend, self._real = backend, real
        self.input_names, self.output_names = real.input_names, real.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        backend = self._backend
        backend.started.set()
        if not backend.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        time.sleep(GatedBackend.MIN_RUN_SECONDS)
        backend.batches.append(np.asarray(next(iter(feeds.values())))[:, 0].tolist())
        return self._real.run(feeds)
