"""One shard of a batch task on a worker: read its inputs, run each, write one result per input.

A shard task (``spec.batch.shard``, made by the operator from a batch task;
see :mod:`legacygpu.operator.batchplan`) is claimed and reported like any
task by :class:`~legacygpu.worker.kube.KubeWorker`; only the run differs,
and that is :func:`run_shard`:

1. resolve the shard's inputs: its slice of the inline list, or its keys in
   the source (``configmap://<name>``: read once; ``http(s)://``: the list,
   then each file, over one connection pool per shard; ``pvc://<claim>/<folder>``:
   the files ``<folder>/<key>`` on the claim the pod mounts under
   ``<claims dir>/<claim>``). A file becomes tensors by its extension
   (:func:`legacygpu.core.inputfiles.read_input_file`, the reader ``task submit`` uses);
2. run the model on each input in turn. An input the model refuses
   (invalid, model error) is a *failed input*, recorded with its reason:
   the other inputs go on. An unknown model fails the whole shard (no input
   could succeed), and anything else (the API or a URL unreachable) is
   raised, so the attempt is retried, possibly on another worker;
3. write the results, one ``<key>.json`` per input, its result or
   ``{"error": {"reason", "message"}}``: to the ConfigMap ``<prefix>-<shard>``
   in one write (:func:`legacygpu.worker.resultmaps.write_configmap`; entries
   past the ConfigMap's size are failed inputs, ``ResultTooLarge``), or for a
   ``pvc://`` output as files in that folder (checked before the first input
   runs), each as soon as it is computed, to a temporary file renamed over
   ``<key>.json``. A retried shard writes the same
   names again: an input's result is never stored twice.

The shard's result in its own status is a summary (counts, the first
failures, where the results are), which the operator adds up into the
batch task's progress. The *listing task* of a ``pvc://`` source
(``shard.listing``) runs no model: its result is the folder's input keys,
sorted (:func:`legacygpu.core.kube.batch.list_folder`), which the operator
splits into shards.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from legacygpu.core.errors import ModelError, UnknownModelError, ValidationError
from legacygpu.core.inputfiles import is_input_file, read_input_file
from legacygpu.core.kube.batch import (
    check_file_key,
    claim_folder,
    configmap_entry,
    inside_claim,
    list_folder,
    output_prefix,
    parse_pvc,
    result_configmap,
    result_key,
    url_listing,
)
from legacygpu.core.kube.errors import ApiError
from legacygpu.core.lifecycle import classify
from legacygpu.core.tasks import Reason
from legacygpu.worker.resultmaps import write_configmap

__all__ = ["is_listing", "is_shard", "run_shard"]

FAILURES_REPORTED = 20
"""Failed inputs named in a shard's status (every one is in its results)."""

Loader = Callable[[], list[dict[str, Any]]]


class ShardHost(Protocol):
    """What :func:`run_shard` needs of the worker: its API access, runner, namespace, limits and claims."""

    namespace: str
    pod: str
    runner: Any
    configmap_limit: int
    claims_dir: Path

    def request(self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
                content_type: str | None = None, timeout: Any = 30) -> Any: ...


def is_shard(spec: Mapping[str, Any]) -> bool:
    """Whether a task's spec is a batch task's shard (or its listing task)."""
    return isinstance((spec.get("batch") or {}).get("shard"), Mapping)


def is_listing(spec: Mapping[str, Any]) -> bool:
    """Whether a task's spec is the listing task of a batch task's ``pvc://`` source."""
    return is_shard(spec) and bool(spec["batch"]["shard"].get("listing"))


def _decode(name: str, raw: bytes, input_name: str) -> list[dict[str, Any]]:
    return read_input_file(name, raw, tensor_input=input_name, image_input=input_name)


def _configmap_loaders(host: ShardHost, name: str, keys: list[str], input_name: str) -> list[tuple[str, Loader]]:
    try:
        configmap = host.request("GET", f"/api/v1/namespaces/{host.namespace}/configmaps/{name}")
    except ApiError as exc:
        if exc.status == 404:
            raise ValidationError(f"spec.batch.source: ConfigMap {name!r} not found") from exc
        raise

    def loader(key: str) -> Loader:
        def load() -> list[dict[str, Any]]:
            raw = configmap_entry(configmap, key)
            if raw is None:
                raise ValidationError(f"input {key!r}: no longer in ConfigMap {name!r}")
            return _decode(key, raw, input_name)

        return load

    return [(key, loader(key)) for key in keys]


def _url_loaders(http: Any, source: str, keys: list[str], input_name: str) -> list[tuple[str, Loader]]:
    response = http.get(source)  # a network error: the shard is retried
    if 400 <= response.status_code < 500:
        raise ValidationError(f"spec.batch.source: {source} answered {response.status_code}")
    response.raise_for_status()
    urls = dict(url_listing(response.json()))

    def loader(key: str) -> Loader:
        def load() -> list[dict[str, Any]]:
            url = urls.get(key)
            if url is None:
                raise ValidationError(f"input {key!r}: no longer listed at {source}")
            answer = http.get(url)
            if 400 <= answer.status_code < 500:
                raise ValidationError(f"input {key!r}: {url} answered {answer.status_code}")
            answer.raise_for_status()
            return _decode(key if is_input_file(key) else url.split("?", 1)[0], answer.content, input_name)

        return load

    return [(key, loader(key)) for key in keys]


def _mounted(host: ShardHost, uri: str, field: str) -> tuple[Path, Path]:
    """(the claim's mount, the folder ``uri`` names there); FileNotFoundError (retried) if the claim is not mounted."""
    claim, _ = parse_pvc(uri, field)
    root = host.claims_dir / claim
    if not root.is_dir():
        raise FileNotFoundError(f"{field}: {uri}: claim {claim} is not mounted at {root} on "
                                f"this worker (is it in the cluster's spec.batchClaims?)")
    return root, claim_folder(host.claims_dir, uri, field)


def _pvc_loaders(host: ShardHost, source: str, keys: list[str], input_name: str) -> list[tuple[str, Loader]]:
    root, folder = _mounted(host, source, "spec.batch.source")
    folder = inside_claim(folder, root, source, "spec.batch.source")
    for key in keys:  # a key names a file in the folder, never a path out of it
        check_file_key(key)

    def loader(key: str) -> Loader:
        def load() -> list[dict[str, Any]]:
            path = inside_claim(folder / key, root, source, "spec.batch.source")
            try:  # O_NOFOLLOW: a symlink planted since the check above is not followed
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError as exc:
                raise ValidationError(f"input {key!r}: no longer in {source}") from exc
            with open(fd, "rb") as file:
                raw = file.read()
            return _decode(key, raw, input_name)

        return load

    return [(key, loader(key)) for key in keys]


def _inline(tensors: list[dict[str, Any]]) -> Loader:
    return lambda: list(tensors)


@contextlib.contextmanager
def _loaders(host: ShardHost, batch: Mapping[str, Any]) -> Iterator[list[tuple[str, Loader]]]:
    input_name = str(batch.get("inputName") or "input")
    if batch.get("inputs"):
        yield [(str(item["key"]), _inline(item["inputs"])) for item in batch["inputs"]]
        return
    keys = list((batch.get("shard") or {}).get("keys") or ())
    source = str(batch.get("source") or "")
    if source.startswith("configmap://"):
        yield _configmap_loaders(host, source[len("configmap://"):], keys, input_name)
    elif source.startswith("pvc://"):
        yield _pvc_loaders(host, source, keys, input_name)
    elif source.startswith(("http://", "https://")):
        import httpx

        with httpx.Client(timeout=30.0, follow_redirects=True) as http:  # one connection pool per shard
            yield _url_loaders(http, source, keys, input_name)
    else:
        raise ValidationError(f"spec.batch.source: unsupported {source!r}")


def _listing(host: ShardHost, spec: Mapping[str, Any]) -> dict[str, Any]:
    source = str(spec["batch"].get("source") or "")
    root, folder = _mounted(host, source, "spec.batch.source")
    keys = list_folder(folder, source, root)
    if not keys:
        raise ValidationError(f"spec.batch.source: {source} holds no input files (images, .npy or .json)")
    listing = {"model": spec["model"], "batch": {"listing": True, "total": len(keys)}, "keys": keys}
    size = len(json.dumps(listing, separators=(",", ":")))
    if size > host.configmap_limit:  # the listing is stored like a result: in one ConfigMap at most
        raise ValidationError(f"spec.batch.source: {source} holds {len(keys)} input files, a listing of {size} "
                              f"bytes: over the {host.configmap_limit} bytes a listing may take; split the folder "
                              "into smaller ones, a batch task each (or use shorter file names)")
    return listing


def run_shard(host: ShardHost, body: Mapping[str, Any]) -> dict[str, Any]:
    """Run every input of the shard task ``body`` and write its results; the summary for its status.

    The listing task of a ``pvc://`` source lists the folder instead (see the module docstring).
    """
    spec = body["spec"]
    if is_listing(spec):
        return _listing(host, spec)
    batch = spec["batch"]
    shard = batch["shard"]
    model, parameters = spec["model"], spec.get("parameters")
    output = str(batch.get("output") or "")
    to_claim = output.startswith("pvc://")
    entries: dict[str, str] = {}
    failures: list[dict[str, str]] = []
    completed = size = 0
    folder: Path | None = None
    with _loaders(host, batch) as loaders:
        if to_claim:  # each key names a result file in the output folder, never a path out of it
            for key, _ in loaders:
                check_file_key(key)
            # Before any input runs: a pod that does not mount the output's claim (yet: the workers
            # roll while a claim is added to spec.batchClaims) fails at once, and the attempt is retried.
            folder = _output_folder(host, output)
        for key, load in loaders:
            try:
                encoded = json.dumps(host.runner.run(model, load(), parameters), separators=(",", ":"))
                error: tuple[str, str] | None = None
            except UnknownModelError:
                raise  # no input of this shard could succeed: the shard fails as a whole
            except (ValidationError, ModelError) as exc:
                error = (classify(exc, worker=host.pod).reason, str(exc)[:1024])
            if error is None and not to_claim and size + len(encoded) > host.configmap_limit:
                error = (Reason.RESULT_TOO_LARGE.value,
                         f"the shard's results exceed the {host.configmap_limit} bytes a result ConfigMap may hold "
                         "(use a smaller spec.batch.shardSize or a pvc:// output)")
            if error is not None:
                encoded = json.dumps({"error": {"reason": error[0], "message": error[1]}}, separators=(",", ":"))
                failures.append({"key": key, "reason": error[0], "message": error[1][:256]})
            else:
                completed += 1
            if folder is not None:  # written as it comes: results are not held in memory
                _write_file(folder, result_key(key), encoded)
            else:
                entries[result_key(key)] = encoded
                size += len(encoded)
    if to_claim:
        where = output
    else:
        name = result_configmap(output_prefix(str(shard["parent"]), output or None), int(shard["index"]))
        write_configmap(host, body, name, entries)
        where = f"configmap://{name}"
    return {
        "model": model,
        "batch": {
            "index": int(shard["index"]),
            "completed": completed,
            "failed": len(failures),
            "failures": failures[:FAILURES_REPORTED],
            "output": where,
        },
    }


def _output_folder(host: ShardHost, output: str) -> Path:
    """The ``pvc://`` output folder, made if missing; never through a symlink out of its claim."""
    root, folder = _mounted(host, output, "spec.batch.output")
    inside_claim(folder, root, output, "spec.batch.output")  # before mkdir: its parents may be symlinks
    folder.mkdir(parents=True, exist_ok=True)
    return inside_claim(folder, root, output, "spec.batch.output")


def _write_file(folder: Path, name: str, text: str) -> None:
    """Write ``text`` as the file ``folder/<name>``: whole or not at all (a temporary file, then a rename).

    The temporary file is new (``mkstemp``: a name nobody can plant a symlink at, and short
    whatever the key's length); the rename replaces ``<name>`` itself, never a file it links to.
    """
    fd, partial = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the results from other users of the claim
        with open(fd, "w") as file:
            file.write(text)
        os.replace(partial, folder / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
