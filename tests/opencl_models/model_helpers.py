"""Helpers shared by the model tests: light-model paths and their random-weight variants."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["light_model", "randomize_light_model", "site_model", "text_image"]


def light_model(name: str) -> Path:
    import onnx

    return Path(os.path.dirname(onnx.__file__)) / "backend/test/data/light" / f"light_{name}.onnx"


def randomize_light_model(src: Path, dst: Path, seed: int = 0) -> Path:
    """Replace a light model's constant (ConstantOfShape) weights with seeded random ones.

    The onnx package's light_* models fill every weight with one constant, so every class
    scores the same and top-1 means nothing. Random weights with fan-in scaling (and
    plausible batch-norm statistics) keep the architecture and give varied outputs.
    """
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumers: dict[str, list[tuple[object, int]]] = {}
    for node in g.node:
        for idx, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, idx))
    keep = []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        users = consumers.get(node.output[0], [])
        op, idx = (users[0][0].op_type, users[0][1]) if users else ("", 0)
        if op == "Conv" and idx == 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(int(np.prod(shape[1:])), 1))
        elif op == "Gemm" and idx == 1:
            trans_b = any(a.name == "transB" and a.i for a in users[0][0].attribute)
            fan_in = shape[1] if trans_b else shape[0]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif (op == "BatchNormalization" and idx in (1, 4)) or op == "Mul":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.standard_normal(shape) * 0.1
        g.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del g.node[:]
    g.node.extend(keep)
    # expose the logits (the classifier's Softmax input) too: a sharper comparison than probabilities
    from onnx import helper

    used = {name for node in keep for name in node.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    inputs = [i for i in g.input if i.name not in {x.name for x in live} and (i.name in used)]
    del g.input[:]
    g.input.extend(inputs)
    outputs = {o.name for o in g.output}
    for node in keep:
        if node.op_type == "Softmax" and node.input[0] not in outputs:
            g.output.append(helper.make_tensor_value_info(node.input[0], 1, None))
    model.ir_version = max(model.ir_version, 4)  # initializers that are not graph inputs
    onnx.save(model, str(dst))
    return dst


def site_model(relpath: str) -> Path:
    """A model file shipped inside an installed package (site-packages)."""
    import site

    for root in site.getsitepackages():
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise FileNotFoundError(relpath)


def text_image(width: int, height: int, lines: list[str]) -> np.ndarray:
    """Black text on white, normalised like PP-OCR's preprocessing ((x/255 - 0.5) / 0.5), NCHW float32."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(height // (len(lines) * 2), 10))
    for i, line in enumerate(lines):
        draw.text((8, 4 + i * height // len(lines)), line, fill="black", font=font)
    x = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None].copy()
