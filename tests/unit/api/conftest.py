"""Fixtures shared by the facade's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import serving_server

from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.backends import create_backend
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingServer


@pytest.fixture
def worker(demo_repository: Path) -> Iterator[ServingServer]:
    """A real worker's REST and gRPC endpoints (onnxruntime, the demo digits model), in this process."""
    with serving_server(TaskRunner(ModelRepository(demo_repository), create_backend("onnxruntime"))) as server:
        yield server
