"""Where a Kubernetes worker gets a model from: ``storageUri`` sources, shared by operator and worker.

An InferenceCluster's ``spec.modelSources`` names models that are not in
the worker image's repository, each by a ``storageUri``:

* ``pvc://<claim>/<path>``: a file on a PersistentVolumeClaim; the operator
  mounts the claim read-only at ``<sources dir>/pvc/<claim>``;
* ``configmap://<name>/<key>``: a small model in a ConfigMap's
  ``binaryData`` (1 MiB at most); the operator mounts the ConfigMap at
  ``<sources dir>/configmap/<name>`` (optional, so a ConfigMap made after
  the pod does not hold the pod back; the worker then reads it through the
  API, as it reads ``inputsUri: configmap://``);
* ``http://`` or ``https://``: downloaded by the worker; ``sha256`` is
  required (the schema's CEL rule says so) and checked.

The operator hands the sources to the worker as JSON in
:data:`SOURCES_ENV`; the worker (``legacygpu.worker.modelfetch``) fetches
them into its cache (:data:`CACHE_ENV`), keyed by sha256, and serves them
beside the image's models. This module holds only what both sides must
agree on: the URI's parts, the folder layout and the variable names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from legacygpu.core.errors import ValidationError
from legacygpu.core.modelcards import check_model_name

__all__ = [
    "CACHE_DIR",
    "CACHE_ENV",
    "SCHEMES",
    "SOURCES_DIR",
    "SOURCES_DIR_ENV",
    "SOURCES_ENV",
    "ModelSource",
    "StorageUri",
    "dump_sources",
    "load_sources",
    "mount_dir",
    "parse_storage_uri",
]

SOURCES_ENV = "LEGACYGPU_MODEL_SOURCES"
"""JSON list of the cluster's ``spec.modelSources`` entries, set on the worker container by the operator."""
CACHE_ENV = "LEGACYGPU_MODEL_CACHE"
"""The worker's writable model cache folder."""
SOURCES_DIR_ENV = "LEGACYGPU_SOURCES_DIR"
"""Where the operator mounts the PVCs and ConfigMaps the sources name."""
CACHE_DIR = "/var/lib/legacygpu/cache"
SOURCES_DIR = "/var/lib/legacygpu/sources"
SCHEMES = ("pvc", "configmap", "http", "https")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


@dataclass(frozen=True)
class StorageUri:
    """One parsed ``storageUri``: ``scheme``, and ``name`` (claim or ConfigMap) with ``path`` (file or key)."""

    uri: str
    scheme: str
    name: str = ""
    path: str = ""

    @property
    def remote(self) -> bool:
        return self.scheme in ("http", "https")


def parse_storage_uri(uri: str) -> StorageUri:
    """The parts of ``uri``; :class:`ValidationError` naming what is wrong with it."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValidationError(
            f"storageUri {uri!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if scheme in ("http", "https"):
        if not rest or rest.startswith("/"):
            raise ValidationError(f"storageUri {uri!r}: no host")
        return StorageUri(uri, scheme)
    name, _, path = rest.partition("/")
    what = "claim" if scheme == "pvc" else "ConfigMap"
    if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        raise ValidationError(f"storageUri {uri!r}: {name!r} is not a valid {what} name")
    if scheme == "configmap":
        if not _CONFIGMAP_KEY.match(path):
            raise ValidationError(f"storageUri {uri!r}: {path!r} is not a valid ConfigMap key")
    elif not path or any(part in ("", ".", "..") for part in PurePosixPath(path).parts) or path.startswith("/"):
        raise ValidationError(f"storageUri {uri!r}: the path on the claim must be relative, without '..'")
    return StorageUri(uri, scheme, name, path)


def mount_dir(sources_dir: str, uri: StorageUri) -> str:
    """The folder where the operator mounts the volume ``uri`` reads from (pvc and configmap only)."""
    return f"{sources_dir.rstrip('/')}/{uri.scheme}/{uri.name}"


@dataclass(frozen=True)
class ModelSource:
    """One entry of ``spec.modelSources``: a model ``name``, its ``storageUri``, ``sha256`` and card fields."""

    name: str
    storage_uri: StorageUri
    sha256: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, entry: dict[str, Any]) -> ModelSource:
        name = check_model_name(str(entry.get("name", "")))
        uri = parse_storage_uri(str(entry.get("storageUri", "")))
        sha = entry.get("sha256")
        if sha is not None and not _SHA256.match(str(sha)):
            raise ValidationError(f"model source {name!r}: sha256 must be 64 lowercase hexadecimal digits")
        if uri.remote and not sha:
            raise ValidationError(f"model source {name!r}: an {uri.scheme}:// storageUri needs a sha256")
        return cls(name, uri, sha, dict(entry.get("card") or {}))


def dump_sources(entries: list[dict[str, Any]]) -> str:
    """``spec.modelSources`` as the worker reads it from :data:`SOURCES_ENV`."""
    return json.dumps(entries, sort_keys=True, separators=(",", ":"))


def load_sources(text: str) -> list[ModelSource]:
    """The sources in :data:`SOURCES_ENV`'s JSON; :class:`ValidationError` for a bad one."""
    try:
        entries = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{SOURCES_ENV} is not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ValidationError(f"{SOURCES_ENV} must be a JSON list")
    return [ModelSource.from_spec(entry) for entry in entries]
