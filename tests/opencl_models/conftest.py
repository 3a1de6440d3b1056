"""Fixtures for the model tests: the shipped demo digits model and its inputs as the card prepares them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, image_tensor


@pytest.fixture(scope="session")
def digits_model(demo_repository: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The demo model (``legacygpu.worker.demo``, as built for service) and its held-out digits.

    The held-out digits are drawn as PNGs and pre-processed by the model's card,
    exactly as in training and in service; returns (model path, inputs, labels).
    """
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import DEMO_MODEL, digit_png, load_split
    from legacygpu.worker.processing import image_to_array

    repository = ModelRepository(demo_repository)
    spec = repository.get(DEMO_MODEL).inputs[0].image
    assert spec is not None
    _, x_test, _, y_test = load_split()
    drawn = np.concatenate([image_to_array(digit_png(row), spec) for row in x_test])
    return repository.model_path(DEMO_MODEL), drawn, y_test


@pytest.fixture(scope="session")
def digit_samples(demo_repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """The shipped sample PNGs (examples/digits) pre-processed by the card as a task would be; (inputs, digits)."""
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.core.tensors import validate_inputs
    from legacygpu.worker.demo import DEMO_MODEL
    from legacygpu.worker.processing import preprocess

    card = ModelRepository(demo_repository).get(DEMO_MODEL)
    paths = sorted(SAMPLES.glob("digit-*.png"))
    assert len(paths) == 10
    feeds = [preprocess(card, validate_inputs(card, [image_tensor(p)]))["input"] for p in paths]
    return np.concatenate(feeds), np.array([int(p.stem.split("-")[1]) for p in paths])
