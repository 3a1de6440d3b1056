"""Fetching the models of ``spec.modelSources`` into the worker's cache, and serving them.

Design: a Kubernetes worker whose pod carries ``LEGACYGPU_MODEL_SOURCES``
(:mod:`legacygpu.core.modelsources`) fetches each source before it preloads
its models, so the pod turns Ready only once they are in place:

* ``http(s)://``: streamed to ``<cache>/partial/<sha256>.part`` while the
  digest is computed, then renamed to ``<cache>/sha256/<sha256>`` if the
  digest is the one the spec gives. A partial file left by an interrupted
  fetch is resumed with a ``Range`` request (a server that answers 200
  instead starts it over). Connection errors, 5xx and 429 are retried with
  back-off; other statuses and a digest mismatch fail the model at once;
* ``pvc://``: read from the claim the operator mounted; used in place when
  no sha256 is given, else copied into the cache through the digest check;
* ``configmap://``: read from the mounted ConfigMap, or through the API
  when the mount holds no such key (the volume is optional and the kubelet
  fills it in only at its next sync), then stored in the cache by digest.

The cache is keyed by sha256, so a restarted container (the emptyDir
survives it) or a second model with the same file fetches nothing. A source
that fails is not served; :func:`prepare_repository` returns the reason,
which the worker publishes (``modelErrors``) and the cluster shows as
``Degraded/ModelLoadFailed``. Progress (bytes, percent) goes to the log
every few seconds and to a callback (the pod's stats annotation).

The models are served from ``<cache>/repository``: a folder rebuilt at each
start with a link to every model of the image's repository and, for each
fetched source, its card and a link to its cached file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from legacygpu.core.errors import LegacyGPUError, ModelError, UnknownModelError, ValidationError
from legacygpu.core.kube.contract import ModelFetchStatus
from legacygpu.core.modelcards import CARD_FILE, MODEL_FILE, ModelCard, ModelRepository, save_card
from legacygpu.core.modelsources import ModelSource, mount_dir

__all__ = ["FetchError", "FetchReport", "ModelFetcher", "ProgressCallback", "prepare_repository"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, ModelFetchStatus], None]
"""Called with a model's name and how far its fetch got (at most every ``report_interval`` while streaming)."""
_RETRYABLE = {429, 500, 502, 503, 504}


class FetchError(ModelError):
    """A model source could not be fetched, or its bytes are not the ones its sha256 names."""


class _Transient(FetchError):
    """A failure worth another try (connection lost, 5xx, 429)."""


def _mib(n: int) -> str:
    """``n`` bytes for a log line: in KiB under 1 MiB, else in MiB."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


class ModelFetcher:
    """Fetches sources into ``cache_dir`` (see the module docstring)."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        sources_dir: Path,
        progress: ProgressCallback | None = None,
        read_configmap: Callable[[str, str], bytes] | None = None,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 30.0,
        report_interval_s: float = 2.0,
        chunk_size: int = 1 << 16,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.sources_dir = Path(sources_dir)
        self.progress = progress
        self.read_configmap = read_configmap
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.report_interval_s = report_interval_s
        self.chunk_size = chunk_size

    def blob(self, sha256: str) -> Path:
        """Where the file with this digest is cached."""
        return self.cache_dir / "sha256" / sha256

    def _report(self, name: str, status: ModelFetchStatus) -> None:
        if self.progress is not None:
            try:
                self.progress(name, status)
            except Exception:  # reporting must never stop a fetch
                log.debug("progress callback failed for %s", name, exc_info=True)

    def fetch(self, source: ModelSource) -> Path:
        """The local file of ``source``, fetched if it is not cached; raises :class:`FetchError`."""
        try:
            path = self._fetch(source)
        except FetchError as exc:
            self._report(source.name, {"phase": "Failed", "message": str(exc)})
            raise
        return path

    def _fetch(self, source: ModelSource) -> Path:
        if source.sha256 and self.blob(source.sha256).is_file():
            size = self.blob(source.sha256).stat().st_size
            log.info("model %s: %s (%s) is in the cache by its sha256; not fetched again",
                     source.name, source.storage_uri.uri, _mib(size))
            self._report(source.name, {"phase": "Cached", "bytes": size, "totalBytes": size, "percent": 100.0})
            return self.blob(source.sha256)
        uri = source.storage_uri
        if uri.remote:
            return self._download(source)
        if uri.scheme == "pvc":
            path = Path(mount_dir(str(self.sources_dir), uri)) / uri.path
            if not path.is_file():
                raise FetchError(f"model {source.name}: {uri.uri}: no file {uri.path!r} on claim {uri.name} "
                                 f"(mounted at {path.parent})")
            log.info("model %s: %s read from claim %s mounted at %s", source.name, uri.uri, uri.name, path.parent)
            if not source.sha256:
                return path
            with path.open("rb") as stream:
                return self._store(source, _chunks(stream, self.chunk_size), path.stat().st_size)
        data = self._configmap_bytes(source)
        return self._store(source, [data], len(data))

    def _configmap_bytes(self, source: ModelSource) -> bytes:
        uri = source.storage_uri
        mounted = Path(mount_dir(str(self.sources_dir), uri)) / uri.path
        if mounted.is_file():
            log.info("model %s: %s read from ConfigMap %s mounted at %s", source.name, uri.uri, uri.name,
                     mounted.parent)
            return mounted.read_bytes()
        if self.read_configmap is None:
            raise FetchError(f"model {source.name}: {uri.uri}: ConfigMap {uri.name} is not mounted at "
                             f"{mounted.parent} or has no key {uri.path!r}")
        log.info("model %s: %s read through the API (ConfigMap %s not mounted at %s or without the key)",
                 source.name, uri.uri, uri.name, mounted.parent)
        return self.read_configmap(uri.name, uri.path)

    def _store(self, source: ModelSource, chunks: Iterable[bytes], total: int) -> Path:
        """Write ``chunks`` into the cache under their digest, checking it against ``source.sha256``."""
        partial = self.cache_dir / "partial" / f"{source.name}.local.part"
        partial.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        done = 0
        with partial.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
        return self._commit(source, partial, digest.hexdigest(), done)

    def _commit(self, source: ModelSource, partial: Path, actual: str, size: int) -> Path:
        if source.sha256 and actual != source.sha256:
            partial.unlink(missing_ok=True)
            raise FetchError(
                f"model {source.name}: sha256 mismatch: {source.storage_uri.uri} gave {size} bytes with sha256 "
                f"{actual}, but spec.modelSources says {source.sha256}; the model is not served"
            )
        target = self.blob(actual)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, target)
        log.info("model %s: %s in the cache (%s, sha256 %s)", source.name, source.storage_uri.uri, _mib(size), actual)
        self._report(source.name, {"phase": "Fetched", "bytes": size, "totalBytes": size, "percent": 100.0})
        return target

    # -- http(s) ---------------------------------------------------------------------------------

    def _download(self, source: ModelSource) -> Path:
        assert source.sha256  # the schema and ModelSource.from_spec require it for http(s)
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return self._download_once(source)
            except _Transient as exc:
                if attempt == self.attempts:
                    raise FetchError(f"{exc} (gave up after {attempt} tries)") from exc
                log.warning("%s; trying again in %.0f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _download_once(self, source: ModelSource) -> Path:
        assert source.sha256
        url = source.storage_uri.uri
        partial = self.cache_dir / "partial" / f"{source.sha256}.part"
        partial.parent.mkdir(parents=True, exist_ok=True)
        offset = partial.stat().st_size if partial.is_file() else 0
        # identity: the digest, the length and a resumed range are all of the file's own bytes
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            with httpx.stream("GET", url, headers=headers, timeout=self.timeout_s, follow_redirects=True) as response:
                if response.status_code == 416 and offset:  # the partial file is not a prefix: start over
                    partial.unlink()
                    raise _Transient(f"model {source.name}: GET {url}: the server refused to resume; starting over")
                if response.status_code in _RETRYABLE:
                    raise _Transient(f"model {source.name}: GET {url}: HTTP {response.status_code}")
                if response.status_code not in (200, 206):
                    raise FetchError(f"model {source.name}: GET {url}: HTTP {response.status_code} "
                                     f"{response.reason_phrase}")
                resumed = response.status_code == 206 and offset > 0
                if not resumed:
                    offset = 0
                length = response.headers.get("content-length")
                total = offset + int(length) if length and length.isdigit() else None
                log.info("model %s: fetching %s (%s)%s", source.name, url, _mib(total) if total else "size unknown",
                         f", resuming at {_mib(offset)}" if resumed else "")
                digest = hashlib.sha256()
                if resumed:
                    with partial.open("rb") as existing:
                        for chunk in _chunks(existing, self.chunk_size):
                            digest.update(chunk)
                done = reported = offset
                last = 0.0
                with partial.open("ab" if resumed else "wb") as out:
                    for chunk in response.iter_bytes(self.chunk_size):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if time.monotonic() - last >= self.report_interval_s:
                            last, reported = time.monotonic(), done
                            self._progress(source.name, done, total)
        except httpx.HTTPError as exc:  # connection refused or lost mid-stream: the partial file stays
            raise _Transient(f"model {source.name}: GET {url}: {type(exc).__name__}: {exc}") from exc
        if reported != done:
            self._progress(source.name, done, total)
        return self._commit(source, partial, digest.hexdigest(), done)

    def _progress(self, name: str, done: int, total: int | None) -> None:
        status: ModelFetchStatus = {"phase": "Fetching", "bytes": done}
        if total:
            status["totalBytes"] = total
            status["percent"] = round(100.0 * done / total, 1)
            log.info("model %s: %s of %s (%.0f%%)", name, _mib(done), _mib(total), status["percent"])
        else:
            log.info("model %s: %s", name, _mib(done))
        self._report(name, status)


def _chunks(stream: object, size: int) -> Iterable[bytes]:
    read = stream.read  # type: ignore[attr-defined]
    while chunk := read(size):
        yield chunk


@dataclass
class FetchReport:
    """What :func:`prepare_repository` did: the folder to serve from and the sources that failed, with why."""

    root: Path
    errors: dict[str, str] = field(default_factory=dict)


def _card(source: ModelSource, base: ModelRepository) -> ModelCard:
    """The source's card: its own fields, else the base repository's card of that name, else a generic one."""
    fields: dict[str, object] = dict(source.card)
    if not fields:
        with contextlib.suppress(UnknownModelError, ValidationError):
            fields = base.get(source.name).model_dump(mode="json")
    fields["name"] = source.name
    fields["file"] = MODEL_FILE
    try:
        return ModelCard.model_validate(fields)
    except ValueError as exc:
        raise ValidationError(f"model {source.name}: spec.modelSources card: {exc}") from exc


def prepare_repository(sources: list[ModelSource], *, base: Path, fetcher: ModelFetcher) -> FetchReport:
    """Fetch ``sources`` and build ``<cache>/repository``: the base repository's models plus the fetched ones.

    A source that fails is left out and its reason returned; the others are served.
    """
    root = fetcher.cache_dir / "repository"
    shutil.rmtree(root, ignore_errors=True)  # links only: the base models and cached files stay
    root.mkdir(parents=True)
    repository = ModelRepository(base)
    own = {s.name for s in sources}
    for name in repository.names():
        if name not in own:
            (root / name).symlink_to((Path(base) / name).resolve(), target_is_directory=True)
    report = FetchReport(root)
    for source in sources:
        try:
            card = _card(source, repository)
            path = fetcher.fetch(source)
        except LegacyGPUError as exc:
            log.error("model %s is not served: %s", source.name, exc)
            report.errors[source.name] = str(exc)
            continue
        folder = root / source.name
        folder.mkdir()
        (folder / MODEL_FILE).symlink_to(path.resolve())
        save_card(card, folder / CARD_FILE)
    return report
