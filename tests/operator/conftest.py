"""Fixtures for the operator tests: a loopback deployment (see operator_harness) and the digits inputs."""

from __future__ import annotations

import base64
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# This folder cannot be a package (it would be named "operator" and shadow the standard
# library), so its helper module is put on the path explicitly.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from operator_harness import Deployment, deployment


@pytest.fixture
async def dep(demo_repository: Path) -> AsyncIterator[Deployment]:
    async with deployment(demo_repository) as d:
        yield d


@pytest.fixture(scope="session")
def digit_inputs() -> dict[str, Any]:
    """A held-out digit (7) as a flat FP32 tensor and as a PNG image tensor, with its label."""
    import numpy as np

    from legacygpu.worker.demo import digit_png, load_split

    _, x_test, _, y_test = load_split()
    index = int(np.flatnonzero(y_test == 7)[0])
    png = digit_png(x_test[index])
    return {
        "label": "7",
        "png": png,
        "image": {"name": "input", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]},
    }
