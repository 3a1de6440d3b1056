"""Fixtures for the model tests: a small digits MLP exported with skl2onnx, and model paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def build_digits_model(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Train a small MLP on sklearn's digits and export it; return (X_test, y_test)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0).fit(x_tr, y_tr)
    onx = to_onnx(clf, x_tr[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    path.write_bytes(onx.SerializeToString())
    return x_te, y_te


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    x_te, y_te = build_digits_model(path)
    return path, x_te, y_te


def light_model(name: str) -> Path:
    import onnx

    return Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light" / f"light_{name}.onnx"
