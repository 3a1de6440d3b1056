"""Model cards are parsed once per version of the file, with libyaml when PyYAML has it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from legacygpu.core import modelcards
from legacygpu.core.modelcards import CARD_FILE, ModelCard, ModelRepository, TensorSpec


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every YAML parse of a card, with the loader it used."""
    seen: list[Any] = []
    real = yaml.load

    def counting(stream: Any, Loader: Any) -> Any:
        seen.append(Loader)
        return real(stream, Loader=Loader)

    monkeypatch.setattr(modelcards.yaml, "load", counting)
    return seen


@pytest.fixture
def repository(tmp_path: Path) -> ModelRepository:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"weights")
    repository = ModelRepository(tmp_path / "models")
    repository.add(ModelCard(name="m", description="first", inputs=[TensorSpec(name="x")]), onnx)
    return repository


def test_a_card_is_parsed_once_however_often_it_is_read(repository: ModelRepository, parses: list[Any]) -> None:
    for _ in range(5):  # what one task does: the facade validates, the worker reads the card and the model path
        assert repository.get("m").description == "first"
        repository.model_path("m")
    assert len(parses) == 1


def test_an_edited_card_is_read_again(repository: ModelRepository, parses: list[Any]) -> None:
    assert repository.get("m").description == "first"
    path = repository.root / "m" / CARD_FILE
    path.write_text(path.read_text().replace("description: first", "description: second, longer"))
    assert repository.get("m").description == "second, longer"
    assert len(parses) == 2


def test_a_card_replaced_by_a_same_sized_file_with_the_same_mtime_is_read_again(
    repository: ModelRepository, parses: list[Any]
) -> None:
    path = repository.root / "m" / CARD_FILE
    repository.get("m")
    before = path.stat()
    fresh = path.with_suffix(".new")
    fresh.write_text(path.read_text().replace("description: first", "description: other"))  # same length
    os.utime(fresh, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(fresh, path)  # how tools replace files atomically: a new inode
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert repository.get("m").description == "other"
    assert len(parses) == 2


def test_an_invalid_edit_is_reported_not_hidden_by_the_cache(repository: ModelRepository) -> None:
    repository.get("m")
    (repository.root / "m" / CARD_FILE).write_text("name: m\ninputs: 7\n")
    with pytest.raises(modelcards.ValidationError, match="invalid model card"):
        repository.get("m")


@pytest.mark.skipif(not getattr(yaml, "__with_libyaml__", False), reason="PyYAML built without libyaml")
def test_the_c_loader_is_used_when_pyyaml_has_it(repository: ModelRepository, parses: list[Any]) -> None:
    repository.get("m")
    assert parses == [yaml.CSafeLoader]
