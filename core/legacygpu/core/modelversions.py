"""Versions of the models in a repository, and which version of each is live.

Beside the live model that everything runs (``<root>/<name>/card.yaml`` and
its file, as :class:`~legacygpu.core.modelcards.ModelRepository` reads it),
a model keeps every version uploaded to it, each in its own folder, with the
file's sha256::

    <root>/digits/card.yaml          the live version: what tasks and /v2 run
    <root>/digits/model.onnx
    <root>/digits/version            "2": which stored version is live
    <root>/digits/versions/1/{card.yaml, model.onnx, sha256}
    <root>/digits/versions/2/{card.yaml, model.onnx, sha256}

Versions are positive integers, written once: a new upload gets the next
number and never overwrites another version, so the live one keeps serving
until the new one is made live (:meth:`ModelVersions.make_live`, which the
repository extension's ``load`` calls). A model added the old way (no
``version`` file) is version 1; it is copied into ``versions/1`` before a
second version is stored beside it. Making a version live replaces the
files one by one with atomic renames (the model file, the card, the version), so a reader sees the
old card or the new one, never a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from legacygpu.core.errors import ConflictError, UnknownModelError, ValidationError
from legacygpu.core.modelcards import CARD_FILE, ModelCard, ModelRepository, check_model_name, load_card, save_card

__all__ = ["SHA256_FILE", "VERSIONS_DIR", "VERSION_FILE", "ChecksumMismatch", "ModelVersions", "sha256_of"]

VERSIONS_DIR = "versions"
VERSION_FILE = "version"
SHA256_FILE = "sha256"
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ChecksumMismatch(ValidationError):
    """The bytes received are not the ones whose sha256 the client sent."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelVersions:
    """The stored versions of the models in ``repository``."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        self.root = repository.root

    def _folder(self, name: str) -> Path:
        check_model_name(name)
        return self.root / name

    def names(self) -> list[str]:
        """Models with a live version or at least one stored one."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self.versions(p.name))

    def live(self, name: str) -> str | None:
        """The live version of ``name`` (``"1"`` for a model added without versions), or None."""
        folder = self._folder(name)
        if not (folder / CARD_FILE).is_file():
            return None
        try:
            text = (folder / VERSION_FILE).read_text().strip()
        except OSError:
            return "1"
        return text if _VERSION.match(text) else "1"

    def versions(self, name: str) -> list[str]:
        """Every version of ``name``, oldest first (the live one included)."""
        try:
            folder = self._folder(name)
        except ValidationError:
            return []
        stored = {p.name for p in (folder / VERSIONS_DIR).glob("*") if _VERSION.match(p.name)
                  and (p / CARD_FILE).is_file()}
        live = self.live(name)
        if live is not None:
            stored.add(live)
        return sorted(stored, key=int)

    def card(self, name: str, version: str) -> ModelCard:
        """The card of one stored version; :class:`UnknownModelError` for one that is not stored."""
        if version not in self.versions(name):
            known = ", ".join(self.versions(name)) or "none"
            raise UnknownModelError(f"model {name!r} has no version {version!r} (its versions: {known})")
        stored = self._folder(name) / VERSIONS_DIR / version / CARD_FILE
        return load_card(stored if stored.is_file() else self._folder(name) / CARD_FILE)

    def add(self, card: ModelCard, data: bytes, *, sha256: str, version: str | None = None) -> str:
        """Store ``data`` (the model file) and ``card`` as a new version of ``card.name``; returns the version.

        Raises :class:`ChecksumMismatch` unless ``sha256`` is the data's, :class:`ConflictError` for a
        version stored already; a new version is the next number unless ``version`` is given.
        """
        sha256 = sha256.strip().lower()
        if not _SHA256.match(sha256):
            raise ValidationError(f"sha256 must be 64 hexadecimal digits, not {sha256!r}")
        actual = sha256_of(data)
        if actual != sha256:
            raise ChecksumMismatch(
                f"sha256 mismatch for {card.file!r}: the request says {sha256}, the {len(data)} bytes received "
                f"hash to {actual}; nothing was stored"
            )
        if version is not None and not _VERSION.match(version):
            raise ValidationError(f"version must be a positive integer, not {version!r}")
        folder = self._folder(card.name)
        existing = self.versions(card.name)
        self._keep_legacy_live(card.name)
        version = version or str(int(existing[-1]) + 1 if existing else 1)
        if version in existing:
            raise ConflictError(f"model {card.name!r} has a version {version} already; versions are never "
                                "overwritten: upload without a version to get the next one")
        target = folder / VERSIONS_DIR / version
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))  # not a version's name
        try:
            (staging / card.file).write_bytes(data)
            (staging / SHA256_FILE).write_text(actual + "\n")
            save_card(card, staging / CARD_FILE)
            os.rename(staging, target)  # fails if another upload took the number meanwhile
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if target.exists():
                raise ConflictError(f"model {card.name!r} version {version} was stored meanwhile") from exc
            raise
        return version

    def _keep_legacy_live(self, name: str) -> None:
        """Copy a live version that has no stored folder (a model added without versions) into one."""
        folder = self._folder(name)
        live = self.live(name)
        if live is None or (folder / VERSIONS_DIR / live / CARD_FILE).is_file():
            return
        card = load_card(folder / CARD_FILE)
        data = (folder / card.file).read_bytes()
        target = folder / VERSIONS_DIR / live
        target.mkdir(parents=True, exist_ok=True)
        (target / card.file).write_bytes(data)
        (target / SHA256_FILE).write_text(sha256_of(data) + "\n")
        save_card(card, target / CARD_FILE)

    def make_live(self, name: str, version: str) -> ModelCard:
        """Make a stored version the one everything runs; returns its card."""
        card = self.card(name, version)
        if self.live(name) == version:
            return card
        folder = self._folder(name)
        stored = folder / VERSIONS_DIR / version
        _write_atomically(folder / card.file, (stored / card.file).read_bytes())
        _write_atomically(folder / CARD_FILE, (stored / CARD_FILE).read_bytes())
        _write_atomically(folder / VERSION_FILE, f"{version}\n".encode())
        return card

    def sha256(self, name: str, version: str) -> str | None:
        try:
            return (self._folder(name) / VERSIONS_DIR / version / SHA256_FILE).read_text().strip() or None
        except OSError:
            return None

    def require(self, name: str) -> list[str]:
        """The versions of ``name``; :class:`UnknownModelError` naming the known models if it has none."""
        found = self.versions(name)
        if not found:
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError(f"unknown model {name!r} (models in the repository: {known})")
        return found
