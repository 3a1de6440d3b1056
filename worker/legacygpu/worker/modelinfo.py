"""A first model card read off an ONNX file: its inputs and outputs, nothing guessed."""

from __future__ import annotations

from pathlib import Path

from legacygpu.core.errors import ModelError
from legacygpu.core.modelcards import ModelCard, TensorSpec

__all__ = ["card_from_onnx"]

_ONNX_TO_OIP = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "FP64"}


def _specs(values: object) -> list[TensorSpec]:
    specs = []
    for value in values:  # type: ignore[attr-defined]
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim]
        specs.append(TensorSpec(name=value.name, datatype=_ONNX_TO_OIP.get(tensor_type.elem_type, "FP32"), shape=dims))
    return specs


def card_from_onnx(name: str, path: Path, description: str = "") -> ModelCard:
    """A card whose inputs and outputs are the graph's (initialisers excluded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelError(f"{path} is not a readable ONNX model: {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return ModelCard(name=name, description=description, inputs=_specs(inputs), outputs=_specs(model.graph.output))
