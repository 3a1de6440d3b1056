"""The demo model: a handwritten-digit classifier trained here, at build time.

Trained on scikit-learn's bundled 8x8 digits (1,797 scans of handwriting,
no download) with a held-out quarter for testing, exported to ONNX with
skl2onnx, and written into a model repository with a card that turns a
photo or scan of a dark digit on light paper, of any size, into the 64
values the network takes. The held-out accuracy is measured on every build
and stored in the card (``metrics.accuracy``). The network is trained and
tested on what it sees in service: every digit drawn as a PNG (dark ink on
white paper, with a margin) and passed through the card's pre-processing.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from legacygpu.core.modelcards import ImageSpec, ModelCard, ModelRepository, PostprocessSpec, TensorSpec

__all__ = ["DEMO_MODEL", "build_demo_model", "digit_png", "ensure_demo_model", "load_split", "write_samples"]

log = logging.getLogger(__name__)

DEMO_MODEL = "digits"
_SEED = 0


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of the digits data (75/25, stratified, fixed seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    return tuple(train_test_split(x, digits.target, test_size=0.25, random_state=_SEED, stratify=digits.target))


def digit_png(pixels: np.ndarray, size: int = 96, margin: int = 16) -> bytes:
    """An 8x8 digit (values 0..16) drawn as a person would: dark ink on white paper, as PNG."""
    ink = np.asarray(pixels, dtype=np.float32).reshape(8, 8) / 16.0
    paper = (255 * (1.0 - ink)).astype(np.uint8)
    inner = size - 2 * margin
    image = Image.fromarray(paper, "L").resize((inner, inner), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), 255)
    canvas.paste(image, (margin, margin))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _card(accuracy: float) -> ModelCard:
    metrics: dict[str, float | str] = {
        "accuracy": round(accuracy, 4),
        "dataset": "sklearn digits drawn as PNGs; 25% held out (450 images)",
    }
    return ModelCard(
        name=DEMO_MODEL,
        description="Handwritten digit classifier (MLP, 64-128-10) trained on scikit-learn's digits.",
        task="image-classification",
        inputs=[
            TensorSpec(
                name="input",
                datatype="FP32",
                shape=[-1, 64],
                image=ImageSpec(
                    color="grayscale", size=(8, 8), crop_to_content=True, invert=True, scale=(0.0, 16.0), layout="flat"
                ),
            )
        ],
        outputs=[
            TensorSpec(name="label", datatype="INT64", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10]),
        ],
        postprocess=PostprocessSpec(output="probabilities", top_k=3, labels=[str(i) for i in range(10)]),
        metrics=metrics,
    )


def build_demo_model(repository: ModelRepository) -> ModelCard:
    """Train, measure, export and store the demo model; returns its card."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    from legacygpu.worker.processing import image_to_array

    x_train, x_test, y_train, y_test = load_split()
    spec = _card(0.0).inputs[0].image
    assert spec is not None

    def as_drawn(x: np.ndarray) -> np.ndarray:
        # What the model sees in service: each digit drawn as a PNG, then pre-processed by the card.
        return np.concatenate([image_to_array(digit_png(row), spec) for row in x])

    drawn_train, drawn_test = as_drawn(x_train), as_drawn(x_test)
    classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=800, random_state=_SEED)
    classifier.fit(drawn_train, y_train)
    accuracy = float((classifier.predict(drawn_test) == y_test).mean())
    onnx_model = to_onnx(classifier, drawn_train[:1], options={id(classifier): {"zipmap": False}}, target_opset=17)
    for graph_input in onnx_model.graph.input:
        graph_input.name = "input" if graph_input.name == "X" else graph_input.name
    for node in onnx_model.graph.node:
        node.input[:] = ["input" if name == "X" else name for name in node.input]
    card = _card(accuracy)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        repository.add(card, path, replace=True)
    log.info("demo model: held-out accuracy %.4f on %d images", accuracy, len(y_test))
    return card


def ensure_demo_model(repository: ModelRepository) -> ModelCard:
    """The demo model's card, building the model first if the repository lacks it."""
    if DEMO_MODEL in repository.names():
        return repository.get(DEMO_MODEL)
    return build_demo_model(repository)


def write_samples(folder: Path) -> list[Path]:
    """One PNG per digit, the first of each class in the held-out set: inputs a person could have drawn."""
    _, x_test, _, y_test = load_split()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for digit in range(10):
        index = int(np.flatnonzero(y_test == digit)[0])
        path = folder / f"digit-{digit}.png"
        path.write_bytes(digit_png(x_test[index], size=128, margin=24))
        written.append(path)
    return written
