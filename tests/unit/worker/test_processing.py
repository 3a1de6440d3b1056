"""Card-driven pre-processing of images and post-processing into top-k."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from legacygpu.core.errors import ValidationError
from legacygpu.core.modelcards import ImageSpec, ModelCard, PostprocessSpec
from legacygpu.worker.processing import image_to_array, postprocess


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_dark_ink_on_light_paper_becomes_light_on_dark_cropped_and_scaled() -> None:
    # A 300x200 "scan": white paper, a black bar in the top-left area only.
    page = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(page).rectangle([20, 30, 59, 129], fill=0)  # 40 wide x 100 tall
    spec = ImageSpec(color="grayscale", size=(8, 8), crop_to_content=True, invert=True, scale=(0, 16), layout="flat")
    array = image_to_array(png(page), spec)
    assert array.shape == (1, 64) and array.dtype == np.float32
    grid = array.reshape(8, 8)
    assert grid.max() == pytest.approx(16.0) and grid.min() == pytest.approx(0.0)
    # Cropped to the bar and centred in a square: ink fills the middle columns, edges are empty.
    assert grid[:, 3:5].min() > 15
    assert grid[:, 0].max() == 0 and grid[:, 7].max() == 0


def test_rgb_nchw_with_mean_and_std() -> None:
    image = Image.new("RGB", (10, 6), (255, 0, 51))
    spec = ImageSpec(color="rgb", size=(4, 2), mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], layout="NCHW")
    array = image_to_array(png(image), spec)
    assert array.shape == (1, 3, 2, 4)
    assert np.allclose(array[0, 0], 1.0) and np.allclose(array[0, 1], -1.0)
    assert np.allclose(array[0, 2], (0.2 - 0.5) / 0.5, atol=1e-6)


def test_unreadable_image_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="not a readable image"):
        image_to_array(b"not an image", ImageSpec(size=(4, 4)))


def test_top_k_best_first_with_labels_and_softmax() -> None:
    post = PostprocessSpec(output="logits", softmax=True, top_k=2, labels=["a", "b", "c"])
    card = ModelCard(name="c", postprocess=post)
    result = postprocess(card, {"logits": np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]], dtype=np.float32)})
    assert [e["label"] for e in result["top_k"]] == ["b", "c"]
    assert result["top_k"][0]["score"] == pytest.approx(np.exp(3) / (1 + np.exp(3) + np.exp(1)))
    assert result["top_k_batch"][1][0]["label"] == "a"
    assert result["outputs"][0]["shape"] == [2, 3]


def test_card_naming_a_missing_output_is_an_error() -> None:
    card = ModelCard(name="c", postprocess=PostprocessSpec(output="nope", top_k=1))
    with pytest.raises(ValidationError, match="'nope'"):
        postprocess(card, {"probabilities": np.zeros((1, 3), np.float32)})
