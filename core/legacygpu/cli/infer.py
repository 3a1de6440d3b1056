"""``legacygpu infer``: one real-time inference through the facade's ``/v2`` endpoint.

Takes the same inputs as ``task submit`` (an image, a ``.npy`` array or a
JSON tensor file) and prints the model's outputs as soon as the worker
answers: nothing is stored, nothing is polled. For an output of class scores
(one row of several values) it also prints the best classes by index, with
the card's labels where the card has them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from legacygpu.cli.client import api_options, make_client
from legacygpu.cli.output import emit, output_option
from legacygpu.cli.task import _model_inputs, read_inputs

__all__ = ["command", "describe"]

_TOP = 3


def describe(response: dict[str, Any], elapsed_ms: float) -> str:
    """The outputs of an inference response, for people."""
    lines = [f"model {response['model_name']} (version {response.get('model_version', '')}), {elapsed_ms:.1f} ms"]
    for output in response.get("outputs", []):
        data = output.get("data", [])
        lines.append(f"output {output['name']} {output['datatype']}{output['shape']}: {data[:8]}")
        shape = output["shape"]
        if output["datatype"].startswith("FP") and len(shape) == 2 and shape[0] == 1 and shape[1] > 1:
            scores = np.asarray(data, dtype=np.float64)
            best = np.argsort(-scores, kind="stable")[:_TOP]
            lines.append("  top classes: " + ", ".join(f"{int(i)} ({scores[i]:.4f})" for i in best))
    return "\n".join(lines)


@click.command()
@click.option("--model", "-m", required=True, help="Model name (see `legacygpu model list`).")
@click.option("--input", "-i", "input_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image, a .npy array or a .json tensor (as for `task submit`).")
@click.option("--input-name", help="Model input to feed (default: the card's image input, else its first).")
@output_option
@api_options
def command(model: str, input_path: Path, input_name: str | None, output: str, api: str | None,
            token: str | None) -> None:
    """Run MODEL on one input now, through the facade's /v2 endpoint, and print the result."""
    client = make_client(api, token)
    inputs = read_inputs(input_path, input_name, _model_inputs(client, model))
    started = time.perf_counter()
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    elapsed_ms = (time.perf_counter() - started) * 1000
    if output == "json":
        emit(response, output)
    else:
        click.echo(describe(response, elapsed_ms))
