"""What the operator and the workers agree on about batch tasks (``spec.batch``).

A batch task's inputs are *keyed*: the key names the input's result entry
(``<key>.json`` in the shard's result ConfigMap, or the file ``<key>.json``
in a ``pvc://`` output folder), so a shard run twice (its worker died, the
shard was retried elsewhere) writes the same entries again instead of new
ones. The operator lists the keys when it splits the batch;
each shard task carries its own keys (``spec.batch.shard.keys``) or its
slice of the inline inputs, and the worker resolves them to files. Both
sides derive keys, names and the result layout from the functions here.

``pvc://<claim>/<path>`` sources and outputs are folders on a claim that the
batch task's InferenceCluster mounts on every worker (``spec.batchClaims``,
at ``<claims dir>/<claim>``, :data:`CLAIMS_DIR`). The operator cannot read a
claim, so a worker lists a source folder for it: the batch's *listing task*
(:func:`listing_name`) returns the folder's input files, sorted, as keys
(:func:`list_folder`), and the operator splits those.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from legacygpu.core.errors import ValidationError
from legacygpu.core.inputfiles import is_input_file

__all__ = [
    "CHILD_TTL_SECONDS",
    "CLAIMS_DIR",
    "CLAIMS_DIR_ENV",
    "LABEL_BATCH",
    "MAX_FAILURES_LISTED",
    "OBJECT_NAME",
    "check_file_key",
    "check_unique_keys",
    "chunks",
    "claim_folder",
    "claims_dir",
    "configmap_entry",
    "configmap_keys",
    "inside_claim",
    "list_folder",
    "listing_name",
    "output_prefix",
    "output_uri",
    "parse_pvc",
    "result_configmap",
    "result_key",
    "shard_name",
    "url_listing",
]

LABEL_BATCH = "legacygpu.io/batch"
"""On shard tasks: the batch task they belong to (when its name fits a label value)."""

CHILD_TTL_SECONDS = 31_536_000
"""Shard tasks outlive any finished-task TTL: they go with their batch task (owner reference)."""

MAX_FAILURES_LISTED = 100
"""Failed inputs listed in a batch task's status (all of them are in the output)."""

CLAIMS_DIR = "/var/lib/legacygpu/claims"
"""Where worker pods mount the claims of their cluster's ``spec.batchClaims`` (one folder per claim)."""
CLAIMS_DIR_ENV = "LEGACYGPU_CLAIMS_DIR"
"""Overrides :data:`CLAIMS_DIR` for a worker (tests)."""

_KEY_CHARS = re.compile(r"[^-._a-zA-Z0-9]+")
_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,200}$")
OBJECT_NAME = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
"""The name of a claim or ConfigMap in a ``pvc://`` or ``configmap://`` URI (unanchored: the CRD's patterns
embed it; its length, at most 253, is checked apart)."""
_CLAIM = re.compile(rf"^{OBJECT_NAME}$")


def shard_name(parent: str, index: int) -> str:
    """The shard task's name: the batch task's, then the shard number."""
    return f"{parent[:240]}-s{index:05d}"


def listing_name(parent: str) -> str:
    """The listing task of a batch task with a ``pvc://`` source."""
    return f"{parent[:240]}-list"


def output_prefix(task: str, output: str | None) -> str:
    """The result ConfigMaps' name prefix: ``spec.batch.output``'s, or ``results-<task>``."""
    if output:
        if not output.startswith("configmap://"):
            raise ValidationError(f"spec.batch.output: unsupported {output!r} (use configmap://<prefix>)")
        return output[len("configmap://"):]
    return f"results-{task}"[:240]


def output_uri(task: str, output: str | None) -> str:
    """Where batch task ``task``'s results go: a ``pvc://`` output as it is, else ``configmap://<prefix>``."""
    if output and output.startswith("pvc://"):
        return output
    return f"configmap://{output_prefix(task, output or None)}"


def parse_pvc(uri: str, field: str = "spec.batch") -> tuple[str, str]:
    """(claim, folder path inside it) of ``pvc://<claim>[/<path>]``; ValidationError naming what is wrong."""
    if not uri.startswith("pvc://"):
        raise ValidationError(f"{field}: {uri!r} is not a pvc://<claim>/<path> URI")
    claim, _, path = uri[len("pvc://"):].partition("/")
    if not _CLAIM.match(claim) or len(claim) > 253:
        raise ValidationError(f"{field}: {uri!r}: {claim!r} is not a PersistentVolumeClaim name")
    parts = path.rstrip("/").split("/") if path.rstrip("/") else []
    if any(p in ("", ".", "..") for p in parts):
        raise ValidationError(f"{field}: {uri!r}: the path must stay inside the claim (no '.', '..' or '//')")
    return claim, "/".join(parts)


def claims_dir() -> Path:
    """This worker's claims folder (:data:`CLAIMS_DIR`, or :data:`CLAIMS_DIR_ENV`)."""
    return Path(os.environ.get(CLAIMS_DIR_ENV) or CLAIMS_DIR)


def claim_folder(root: Path, uri: str, field: str = "spec.batch") -> Path:
    """The folder ``pvc://<claim>/<path>`` names on a worker whose claims are mounted under ``root``."""
    claim, path = parse_pvc(uri, field)
    return root.joinpath(claim, *PurePosixPath(path).parts)


def check_file_key(key: str) -> str:
    """``key`` if it can name a file in a ``pvc://`` folder (no '/', not '.' or '..'); else ValidationError."""
    if not _KEY.match(key) or key in (".", ".."):
        raise ValidationError(f"spec.batch.shard.keys: {key!r} is not an input key (letters, digits, '-', '_', '.')")
    return key


def inside_claim(path: Path, claim: Path, uri: str, field: str = "spec.batch") -> Path:
    """``path`` with its symlinks resolved, if that stays inside the folder ``claim`` (a claim's mount).

    A batch never leaves its claim: every worker mounts every claim of its cluster, so a symlink
    on one claim (or a folder on it) that points elsewhere would let a batch read or write another
    claim or the worker's own files. ValidationError naming the path and where it leads.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(claim.resolve()):
        shown = path.relative_to(claim) if path.is_relative_to(claim) else path
        raise ValidationError(f"{field}: {uri}: {str(shown)!r} leads out of the claim through a symlink "
                              "(a batch reads and writes only its own claim)")
    return resolved


def list_folder(folder: Path, uri: str, claim: Path) -> list[str]:
    """The input keys of a ``pvc://`` source folder (on the claim mounted at ``claim``): its input files' names, sorted.

    Hidden files, folders and files of other types are not inputs (a README beside the images);
    an input file whose name is not a valid key, or a symlink that leads out of the claim, is
    refused, naming it, rather than left out.
    """
    if not folder.is_dir():
        raise ValidationError(f"spec.batch.source: {uri}: no such folder on the claim")
    folder = inside_claim(folder, claim, uri, "spec.batch.source")
    entries = [e for e in os.scandir(folder) if not e.name.startswith(".") and is_input_file(e.name)]
    for entry in entries:  # is_file() below follows symlinks: only to files on the same claim
        if entry.is_symlink():
            inside_claim(Path(entry.path), claim, uri, "spec.batch.source")
    keys = sorted(e.name for e in entries if e.is_file())
    bad = [k for k in keys if not _KEY.match(k)]
    if bad:
        raise ValidationError(f"spec.batch.source: {uri}: file names {bad[:5]} are not input keys "
                              "(letters, digits, '-', '_' and '.', at most 200); rename them")  # fmt: skip
    return keys


def result_configmap(prefix: str, index: int) -> str:
    """Shard ``index``'s result ConfigMap."""
    return f"{prefix[:240]}-{index}"


def result_key(key: str) -> str:
    """The result ConfigMap entry of input ``key``."""
    return f"{key}.json"


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive pieces of ``size`` (the last one shorter)."""
    return [items[start:start + size] for start in range(0, len(items), max(1, size))]


def configmap_keys(configmap: Mapping[str, Any]) -> list[str]:
    """Every input key of a source ConfigMap (text and binary entries), sorted."""
    return sorted({*(configmap.get("data") or {}), *(configmap.get("binaryData") or {})})


def configmap_entry(configmap: Mapping[str, Any], key: str) -> bytes | None:
    """The bytes a ConfigMap holds under ``key`` (``binaryData`` before ``data``), or None when it has none.

    Raises :class:`ValidationError` when a ``binaryData`` entry is not base64.
    """
    binary, text = configmap.get("binaryData") or {}, configmap.get("data") or {}
    if key in binary:
        try:
            return base64.b64decode(binary[key], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"ConfigMap key {key!r}: binaryData is not base64: {exc}") from exc
    return str(text[key]).encode() if key in text else None


def url_listing(listing: Any) -> list[tuple[str, str]]:
    """(key, url) pairs from a source URL's JSON: a list of URLs or of ``{key, url}`` objects.

    A bare URL's key is its position and file name (``00003-digit-3.png``), so keys stay unique
    and keep the extension that says how to decode the file.
    """
    if isinstance(listing, Mapping) and isinstance(listing.get("inputs"), list):
        listing = listing["inputs"]
    if not isinstance(listing, list):
        raise ValidationError("spec.batch.source: expected a JSON list of URLs or of {key, url} objects")
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(listing):
        if isinstance(item, str):
            base = item.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
            pairs.append((f"{index:05d}-{_KEY_CHARS.sub('_', base)}"[:200], item))
        elif isinstance(item, Mapping) and isinstance(item.get("url"), str) and isinstance(item.get("key"), str):
            pairs.append((_KEY_CHARS.sub("_", item["key"])[:200], item["url"]))
        else:
            raise ValidationError(f"spec.batch.source: entry {index} is neither a URL nor a {{key, url}} object")
    check_unique_keys(key for key, _ in pairs)
    return pairs


def check_unique_keys(keys: Iterable[str]) -> None:
    """Refuse a batch whose inputs share a key (their results would overwrite each other)."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValidationError(f"spec.batch: input key {key!r} appears twice")
        seen.add(key)
