"""Model versions on disk: numbered, sha256-checked, never overwritten; the live one swapped only on demand."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from legacygpu.core.errors import ConflictError, UnknownModelError, ValidationError
from legacygpu.core.modelcards import ModelCard, ModelRepository
from legacygpu.core.modelversions import ChecksumMismatch, ModelVersions


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_versions_are_numbered_kept_and_made_live_on_demand(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    versions = ModelVersions(repository)
    card = ModelCard(name="m")
    assert versions.add(card, b"one", sha256=_sha(b"one")) == "1"
    assert versions.live("m") is None and repository.names() == []  # stored, not live
    assert versions.add(card, b"two", sha256=_sha(b"two").upper()) == "2"
    assert versions.versions("m") == ["1", "2"] and versions.names() == ["m"]
    versions.make_live("m", "1")
    assert versions.live("m") == "1" and repository.model_path("m").read_bytes() == b"one"
    versions.make_live("m", "2")
    assert versions.live("m") == "2" and repository.model_path("m").read_bytes() == b"two"
    assert versions.sha256("m", "1") == _sha(b"one")
    with pytest.raises(ConflictError, match="has a version 2 already"):
        versions.add(card, b"again", sha256=_sha(b"again"), version="2")
    with pytest.raises(UnknownModelError, match="has no version '9'"):
        versions.make_live("m", "9")


def test_a_wrong_sha256_stores_nothing_and_names_both_hashes(tmp_path: Path) -> None:
    versions = ModelVersions(ModelRepository(tmp_path))
    with pytest.raises(ChecksumMismatch) as raised:
        versions.add(ModelCard(name="m"), b"data", sha256=_sha(b"other"))
    assert _sha(b"other") in str(raised.value) and _sha(b"data") in str(raised.value)
    assert versions.versions("m") == []
    with pytest.raises(ValidationError, match="64 hexadecimal digits"):
        versions.add(ModelCard(name="m"), b"data", sha256="abc")


def test_a_model_added_without_versions_is_version_1_and_kept_when_2_arrives(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    source = tmp_path / "old.onnx"
    source.write_bytes(b"old")
    repository.add(ModelCard(name="m"), source)
    versions = ModelVersions(repository)
    assert versions.live("m") == "1" and versions.versions("m") == ["1"]
    assert versions.add(ModelCard(name="m"), b"new", sha256=_sha(b"new")) == "2"
    assert repository.model_path("m").read_bytes() == b"old"  # still live until version 2 is made live
    versions.make_live("m", "2")
    versions.make_live("m", "1")
    assert repository.model_path("m").read_bytes() == b"old"
