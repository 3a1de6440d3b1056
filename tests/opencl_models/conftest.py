"""Fixtures for the model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opencl_models.model_helpers import build_digits_model


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    x_te, y_te = build_digits_model(path)
    return path, x_te, y_te
