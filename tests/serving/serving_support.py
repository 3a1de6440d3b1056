"""Helpers shared by the serving tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from helpers import FixedWorkers, facade_app, facade_client
from prometheus_client import CollectorRegistry

from legacygpu.api.discovery import ServingEndpoint
from legacygpu.api.forwarding import Forwarder
from legacygpu.core.modelcards import CARD_FILE, DynamicBatchingSpec, load_card, save_card
from legacygpu.worker.backends import BackendInfo, LoadedModel, create_backend
from legacygpu.worker.serving.batching import INLINE_SECONDS

__all__ = ["EXAMPLES", "Facade", "GatedBackend", "enable_batching", "facade"]

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

    MIN_RUN_SECONDS = 5 * INLINE_SECONDS

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


@dataclass
class Facade:
    http: httpx.Client
    """To the facade's REST port, with the users' token."""
    grpc: str
    """``host:port`` of the facade's gRPC port."""
    forwarder: Forwarder
    metrics: CollectorRegistry
    """The facade's metrics."""


@contextlib.contextmanager
def facade(data_dir: Path, *endpoints: ServingEndpoint) -> Iterator[Facade]:
    """A real facade (``create_app``: REST on uvicorn, gRPC on a port of its own) on loopback, forwarding
    ``/v2`` to ``endpoints``; only discovery is a stand-in. It reads the worker list once (refresh: 60 s), so a
    worker that fails stays passed over for the whole test."""
    app = facade_app(data_dir, grpc=True)
    forwarder = app.state.forwarder = Forwarder(FixedWorkers(*endpoints), app.state.metrics.registry,  # type: ignore[arg-type]
                                                refresh_seconds=60)
    with facade_client(app) as http:
        yield Facade(http, f"127.0.0.1:{app.state.grpc_port}", forwarder, app.state.metrics.registry)
