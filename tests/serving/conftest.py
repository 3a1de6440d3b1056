"""Fixtures for the real-time serving tests: a repository with batching on, and an in-process worker server."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import serving_server

from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.backends import create_backend
from legacygpu.worker.runner import TaskRunner
from legacygpu.worker.serving import ServingServer

# The helpers beside this file are imported by name (as the operator tests do theirs).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_support import enable_batching


@pytest.fixture
def serving_models(tmp_path: Path, demo_repository: Path) -> Path:
    """A copy of the demo repository whose digits card batches."""
    models = tmp_path / "models"
    shutil.copytree(demo_repository, models)
    enable_batching(models)
    return models


@pytest.fixture
def runner(serving_models: Path) -> TaskRunner:
    return TaskRunner(ModelRepository(serving_models), create_backend("onnxruntime"))


@pytest.fixture
def worker_server(runner: TaskRunner) -> Iterator[ServingServer]:
    """A worker's REST and gRPC endpoints on loopback, in this process, over the real onnxruntime backend."""
    with serving_server(runner) as server:
        yield server
