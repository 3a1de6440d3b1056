"""``legacygpu model``: the model repository (add, list, the demo model, check)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from legacygpu.cli.client import CliError, api_options, make_client
from legacygpu.cli.output import Column, emit, output_option
from legacygpu.core.config import Settings
from legacygpu.core.errors import LegacyGPUError

__all__ = ["command"]

MODEL_COLUMNS: list[Column] = [
    ("NAME", lambda m: m["name"]),
    ("TASK", lambda m: m["task"]),
    ("INPUTS", lambda m: ", ".join(f"{i['name']}:{i['datatype']}{i['shape']}" + (" (image)" if i.get("image") else "")
                                   for i in m["inputs"])),
    ("LABELS", lambda m: m["labels"] or None),
    ("ACCURACY", lambda m: m["metrics"].get("accuracy")),
]


def _settings(data_dir: Path | None) -> Settings:
    return Settings(**({"data_dir": data_dir} if data_dir else {}))  # type: ignore[arg-type]


@click.group()
def command() -> None:
    """Manage the model repository."""


@command.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--card", "card_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Model card YAML: inputs (with image pre-processing), outputs, softmax/top-k, labels.")
@click.option("--replace", is_flag=True, help="Overwrite a model of the same name.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data dir holding the model repository [env LEGACYGPU_DATA_DIR].")
def add(name: str, path: Path, card_path: Path | None, replace: bool, data_dir: Path | None) -> None:
    """Add the ONNX model at PATH as NAME to the local repository (workers load it on first use)."""
    from pydantic import ValidationError as SchemaError

    from legacygpu.core.modelcards import ModelCard, ModelRepository, check_model_name, load_card
    from legacygpu.worker.modelinfo import card_from_onnx

    repository = ModelRepository(_settings(data_dir).models_dir)
    try:
        check_model_name(name)
        read = card_from_onnx(name, path)
        if card_path is not None:
            given = load_card(card_path)
            card = given.model_copy(
                update={"name": name, "inputs": given.inputs or read.inputs, "outputs": given.outputs or read.outputs}
            )
        else:
            card = read
        folder = repository.add(ModelCard.model_validate(card.model_dump()), path, replace=replace)
    except LegacyGPUError as exc:
        raise CliError(str(exc)) from exc
    except SchemaError as exc:  # the card as merged breaks a rule of the card schema
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid model card for {name!r}: {problems}") from exc
    click.echo(f"added model {name!r} in {folder}")


@command.command("list")
@output_option
@api_options
def list_models(output: str, api: str | None, token: str | None) -> None:
    """Models the cluster can run."""
    page = make_client(api, token).get("/cluster/models")
    emit(page if output == "json" else page["data"], output, MODEL_COLUMNS)


@command.command("build-demo")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data dir holding the model repository [env LEGACYGPU_DATA_DIR].")
@click.option("--samples", type=click.Path(file_okay=False, path_type=Path),
              help="Also write one sample PNG per digit (from the held-out set) into this folder.")
@click.option("--force", is_flag=True, help="Train again even if the model exists.")
def build_demo(data_dir: Path | None, samples: Path | None, force: bool) -> None:
    """Train the demo digits classifier, measure it, and add it to the repository."""
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import build_demo_model, ensure_demo_model, write_samples

    logging.basicConfig(level=logging.WARNING)
    repository = ModelRepository(_settings(data_dir).models_dir)
    card = build_demo_model(repository) if force else ensure_demo_model(repository)
    click.echo(f"demo model 'digits' in {repository.root}: held-out accuracy {card.metrics['accuracy']} "
               f"({card.metrics['dataset']})")
    if samples is not None:
        for path in write_samples(samples):
            click.echo(f"wrote {path}")


try:  # `model check` belongs to the OpenCL core; absent from images without it
    from legacygpu.cli.model_check import check as _check
except ImportError:  # pragma: no cover
    pass
else:
    command.add_command(_check, "check")
