"""``legacygpu model``: the model repository (add, list, the demo model, check)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from legacygpu.cli.client import CliError, api_options, make_client
from legacygpu.cli.output import Column, emit, output_option
from legacygpu.core.config import Settings
from legacygpu.core.errors import LegacyGPUError

if TYPE_CHECKING:
    from legacygpu.core.modelcards import ModelCard

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
@click.option("--replace", is_flag=True, help="Overwrite a model of the same name (local repository only).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data dir holding the model repository [env LEGACYGPU_DATA_DIR].")
@click.option("--api", help="Upload to the facade at this URL instead of writing the local disk: a new version, "
              "sha256-checked, that serves once loaded (see --load).")
@click.option("--token", envvar="LEGACYGPU_ADMIN_TOKEN",
              help="The admin token, with --api [env LEGACYGPU_ADMIN_TOKEN; default the data dir's admin-token].")
@click.option("--version", "model_version", help="With --api: the version number to store (default: the next).")
@click.option("--load", "load_after", is_flag=True,
              help="With --api: load the new version on the workers at once (it becomes the live version).")
def add(name: str, path: Path, card_path: Path | None, replace: bool, data_dir: Path | None, api: str | None,
        token: str | None, model_version: str | None, load_after: bool) -> None:
    """Add the ONNX model at PATH as NAME: to the local repository, or with --api to a running cluster's.

    Locally, workers load it on first use. With --api the file goes to the facade as a new version
    (an older one keeps serving until the new one is loaded: --load, or
    POST /v2/repository/models/NAME/load).
    """
    from legacygpu.core.modelcards import ModelRepository

    card = _card_for(name, path, card_path)
    if api is not None:
        _upload(api, token, card, path, model_version, load_after)
        return
    if model_version is not None or load_after:
        raise CliError("--version and --load go with --api (a running cluster's repository)")
    try:
        folder = ModelRepository(_settings(data_dir).models_dir).add(card, path, replace=replace)
    except LegacyGPUError as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"added model {name!r} in {folder}")


def _card_for(name: str, path: Path, card_path: Path | None) -> ModelCard:
    """The card for the ONNX file at ``path``: read from the file, merged with ``card_path`` if given."""
    from pydantic import ValidationError as SchemaError

    from legacygpu.core.modelcards import ModelCard, check_model_name, load_card
    from legacygpu.worker.modelinfo import card_from_onnx

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
        return ModelCard.model_validate(card.model_dump())
    except LegacyGPUError as exc:
        raise CliError(str(exc)) from exc
    except SchemaError as exc:  # the card as merged breaks a rule of the card schema
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid model card for {name!r}: {problems}") from exc


def _upload(api: str, token: str | None, card: ModelCard, path: Path, version: str | None, load: bool) -> None:
    """Upload a new version through the facade's repository extension (and load it)."""
    import hashlib

    import yaml

    data = path.read_bytes()
    fields = {"sha256": hashlib.sha256(data).hexdigest(),
              "card": yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False)}
    if version is not None:
        fields["version"] = version
    client = make_client(api, token, role="admin", timeout=600.0)  # a big model takes a while to send
    try:
        stored = client.post(f"/v2/repository/models/{card.name}/versions", data=fields,
                             files={"model": (card.file, data, "application/octet-stream")})
        click.echo(f"uploaded model {card.name!r} version {stored['version']} ({stored['bytes']} bytes, "
                   f"sha256 {stored['sha256']}) to {client.url}")
        if load:
            client.post(f"/v2/repository/models/{card.name}/load",
                        json={"parameters": {"version": stored["version"]}})
            click.echo(f"loaded: version {stored['version']} of {card.name!r} is live")
    finally:
        client.close()


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
