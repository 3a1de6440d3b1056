"""Fixtures shared by every test tier (helpers live in ``tests/helpers.py``).

The demo model is trained once per session (it takes a few seconds) and
copied into each test's own data dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LocalCluster, slow_model

# Mesa rusticl exposes llvmpipe (a CPU device) only when asked; the OpenCL tiers run on it
# beside PoCL (tests/ocl_platforms.py). Set before any test touches OpenCL: the ICD reads it once.
# Device choice is unaffected: open_device() prefers PoCL over llvmpipe among CPU devices.
os.environ.setdefault("RUSTICL_ENABLE", "llvmpipe")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API keeps an event loop running in the main thread
    for the rest of the session, which asyncio tests after it cannot start their own under."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the demo digits model, trained once per session."""
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import build_demo_model

    root = tmp_path_factory.mktemp("demo-models")
    build_demo_model(ModelRepository(root))
    return root


@pytest.fixture
def data_dir(tmp_path: Path, demo_repository: Path) -> Path:
    """A fresh data dir with the demo model in its repository."""
    shutil.copytree(demo_repository, tmp_path / "data" / "models")
    return tmp_path / "data"


@pytest.fixture
def slow_model_repo(data_dir: Path, tmp_path: Path) -> str:
    """Adds the slow model to ``data_dir``'s repository as ``slow``; returns its name."""
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx

    path = slow_model(tmp_path / "slow.onnx")
    ModelRepository(data_dir / "models").add(card_from_onnx("slow", path), path)
    return "slow"


@pytest.fixture
def cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """A started facade with no workers yet (tests add what they need)."""
    c = LocalCluster(data_dir)
    c.start_api()
    try:
        yield c
    finally:
        c.stop()
