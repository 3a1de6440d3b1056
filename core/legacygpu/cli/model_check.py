"""``legacygpu model check MODEL.onnx``: will my model run on my card?

Runs the model on the chosen backend (OpenCL by default) and on onnxruntime
with the same random inputs, and prints per output the max absolute and
relative error, then which ops ran on OpenCL, which fell back to
onnxruntime and why, and the share of FLOPs that ran on OpenCL. ``--output
json`` prints the same as one JSON object (``outputs``,
``opencl_flop_share``, ``ops``, ``fallback_ops``, ...).

The command is attached to the ``legacygpu model`` group by
:mod:`legacygpu.cli.model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from legacygpu.cli.output import output_option, table
from legacygpu.core.errors import LegacyGPUError
from legacygpu.core.logs import quieted

__all__ = ["check", "command"]


def _dims(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise click.BadParameter(f"expected NAME=SIZE with SIZE >= 1, got {item!r}", param_hint="--dim")
        out[name.strip()] = int(value)
    return out


def _fmt_flops(value: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOP"


@click.command("check")
@click.argument("model")
@click.option("--backend", type=click.Choice(["opencl", "onnxruntime", "auto"]), default="opencl", show_default=True,
              help="Backend compared against onnxruntime.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="Size of a dynamic input dimension, by its name in the model (default 1). Repeatable.")
@click.option("--device", "device_index", type=int, default=None, help="OpenCL device index (see `legacygpu devices`).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--tolerance", type=float, default=None,
              help="Exit with status 1 when an output's relative error exceeds this.")
@output_option
def check(
    model: str, backend: str, dims: tuple[str, ...], device_index: int | None, seed: int,
    tolerance: float | None, output: str,
) -> None:  # fmt: skip
    """Run MODEL (an .onnx file, or the name of a model in the repository) on BACKEND and on onnxruntime
    with random inputs and compare them."""
    from legacygpu.worker.opencl.check import check_model

    try:
        path = _model_path(model)
        with quieted("legacygpu.worker.opencl"):  # the report names every op that fell back; the warnings repeat it
            result = check_model(path, backend=backend, dims=_dims(dims), device_index=device_index, seed=seed)
    except LegacyGPUError as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_table(result)
    worst = max((o.max_rel_error for o in result.outputs), default=0.0)
    if tolerance is not None and worst > tolerance:
        raise click.ClickException(f"max relative error {worst:.3g} exceeds the tolerance {tolerance:g}")


def _model_path(model: str) -> Path:
    """An existing file as given, else the named model's file in the repository (``LEGACYGPU_DATA_DIR``)."""
    from legacygpu.core.config import Settings
    from legacygpu.core.modelcards import ModelRepository

    given = Path(model)
    if given.is_file():
        return given
    if given.suffix == ".onnx" or "/" in model:
        raise click.BadParameter(f"file {model} does not exist", param_hint="MODEL")
    return ModelRepository(Settings().models_dir).model_path(model)


def _print_table(result) -> None:  # type: ignore[no-untyped-def]
    click.echo(f"model   {result.model}")
    click.echo(f"backend {result.backend} on {result.device}")
    click.echo(f"inputs  {', '.join(f'{k}{v}' for k, v in result.input_shapes.items())}")
    click.echo("")
    rows = [o.__dict__ for o in result.outputs]
    click.echo(table(rows, [
        ("OUTPUT", lambda r: r["name"]),
        ("SHAPE", lambda r: r["shape"]),
        ("MAX ABS ERR", lambda r: f"{r['max_abs_error']:.3g}"),
        ("MAX REL ERR", lambda r: f"{r['max_rel_error']:.3g}"),
        ("REF MAX", lambda r: f"{r['reference_max']:.3g}"),
        ("TOP-1", lambda r: {None: "", True: "same", False: "DIFFERS"}[r["top1_match"]]),
    ]))  # fmt: skip
    if not result.ops:
        return
    click.echo("")
    summary = [{"op": op, **counts} for op, counts in result.op_summary().items()]
    click.echo(table(summary, [
        ("OP", lambda r: r["op"]),
        ("OPENCL", lambda r: r.get("opencl", 0)),
        ("ONNXRUNTIME", lambda r: r.get("onnxruntime", 0)),
        ("FOLDED", lambda r: r.get("folded", 0)),
    ]))  # fmt: skip
    fallbacks = result.fallback_ops
    if fallbacks:
        click.echo("")
        click.echo("ran on onnxruntime:")
        for o in fallbacks:
            click.echo(f"  {o.name} ({o.op}): {o.reason}")
    click.echo("")
    click.echo(f"OpenCL FLOP share: {100 * result.opencl_flop_share:.2f}% of {_fmt_flops(result.total_flops)}")


command = check
