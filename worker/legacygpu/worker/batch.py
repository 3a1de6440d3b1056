"""One shard of a batch task on a worker: read its inputs, run each, write one result ConfigMap.

A shard task (``spec.batch.shard``, made by the operator from a batch task;
see :mod:`legacygpu.operator.batchplan`) is claimed and reported like any
task by :class:`~legacygpu.worker.kube.KubeWorker`; only the run differs,
and that is :func:`run_shard`:

1. resolve the shard's inputs: its slice of the inline list, or its keys in
   the source (``configmap://<name>``: read once; ``http(s)://``: the list,
   then each file). A file becomes tensors by its extension
   (:func:`decode_file`);
2. run the model on each input in turn. An input the model refuses
   (invalid, model error) is a *failed input*, recorded with its reason:
   the other inputs go on. An unknown model fails the whole shard (no input
   could succeed), and anything else (the API or a URL unreachable) is
   raised, so the attempt is retried, possibly on another worker;
3. write the ConfigMap ``<prefix>-<shard>``: one ``<key>.json`` entry per
   input, its result or ``{"error": {"reason", "message"}}``. One write per
   shard, created or, on a retry, replaced with the same keys: an input's
   result is never stored twice. Entries past the ConfigMap's size are
   failed inputs (``ResultTooLarge``), never a failed shard.

The shard's result in its own status is a summary (counts, the first
failures, where the results are), which the operator adds up into the
batch task's progress.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from legacygpu.core.errors import ModelError, UnknownModelError, ValidationError
from legacygpu.core.kube.batch import configmap_entry, output_prefix, result_configmap, result_key, url_listing
from legacygpu.core.kube.client import MERGE_PATCH
from legacygpu.core.kube.contract import API_VERSION, LABEL_WORKER, TASK_KIND
from legacygpu.core.kube.errors import ApiError
from legacygpu.core.lifecycle import classify
from legacygpu.core.tasks import Reason

__all__ = ["IMAGE_SUFFIXES", "decode_file", "is_shard", "run_shard"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FAILURES_REPORTED = 20
"""Failed inputs named in a shard's status (every one is in its result ConfigMap)."""

Loader = Callable[[], list[dict[str, Any]]]


class ShardHost(Protocol):
    """What :func:`run_shard` needs of the worker: its API access, runner, namespace and limits."""

    namespace: str
    pod: str
    runner: Any
    configmap_limit: int

    def request(self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
                content_type: str | None = None, timeout: Any = 30) -> Any: ...


def is_shard(spec: Mapping[str, Any]) -> bool:
    """Whether a task's spec is a batch task's shard."""
    return isinstance((spec.get("batch") or {}).get("shard"), Mapping)


def decode_file(key: str, raw: bytes, input_name: str) -> list[dict[str, Any]]:
    """The tensors of one input file, by its extension (see the module docstring)."""
    lower = key.lower()
    if lower.endswith(IMAGE_SUFFIXES):
        return [{"name": input_name, "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(raw).decode()]}]
    if lower.endswith(".npy"):
        import numpy as np

        from legacygpu.core.tensors import from_numpy

        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValidationError(f"input {key!r}: not a .npy file: {exc}") from exc
        return [from_numpy(input_name, array)]
    if lower.endswith(".json"):
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"input {key!r}: not JSON: {exc}") from exc
        tensors = loaded.get("inputs") if isinstance(loaded, dict) else loaded
        if not isinstance(tensors, list):
            raise ValidationError(f"input {key!r}: expected a list of tensors or an object with 'inputs'")
        return tensors
    raise ValidationError(
        f"input {key!r}: unknown file type (expected an image {', '.join(IMAGE_SUFFIXES)}, .npy or .json)"
    )


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
            return decode_file(key, raw, input_name)

        return load

    return [(key, loader(key)) for key in keys]


def _url_loaders(source: str, keys: list[str], input_name: str) -> list[tuple[str, Loader]]:
    import httpx

    response = httpx.get(source, timeout=30.0, follow_redirects=True)  # a network error: the shard is retried
    if 400 <= response.status_code < 500:
        raise ValidationError(f"spec.batch.source: {source} answered {response.status_code}")
    response.raise_for_status()
    urls = dict(url_listing(response.json()))

    def loader(key: str) -> Loader:
        def load() -> list[dict[str, Any]]:
            url = urls.get(key)
            if url is None:
                raise ValidationError(f"input {key!r}: no longer listed at {source}")
            answer = httpx.get(url, timeout=30.0, follow_redirects=True)
            if 400 <= answer.status_code < 500:
                raise ValidationError(f"input {key!r}: {url} answered {answer.status_code}")
            answer.raise_for_status()
            known = key.lower().endswith((*IMAGE_SUFFIXES, ".npy", ".json"))
            return decode_file(key if known else url.split("?", 1)[0], answer.content, input_name)

        return load

    return [(key, loader(key)) for key in keys]


def _inline(tensors: list[dict[str, Any]]) -> Loader:
    return lambda: list(tensors)


def _loaders(host: ShardHost, batch: Mapping[str, Any]) -> list[tuple[str, Loader]]:
    input_name = str(batch.get("inputName") or "input")
    if batch.get("inputs"):
        return [(str(item["key"]), _inline(item["inputs"])) for item in batch["inputs"]]
    keys = list((batch.get("shard") or {}).get("keys") or ())
    source = str(batch.get("source") or "")
    if source.startswith("configmap://"):
        return _configmap_loaders(host, source[len("configmap://"):], keys, input_name)
    if source.startswith(("http://", "https://")):
        return _url_loaders(source, keys, input_name)
    raise ValidationError(f"spec.batch.source: unsupported {source!r}")


def run_shard(host: ShardHost, body: Mapping[str, Any]) -> dict[str, Any]:
    """Run every input of the shard task ``body``, write its result ConfigMap; the summary for its status."""
    spec = body["spec"]
    batch = spec["batch"]
    shard = batch["shard"]
    model, parameters = spec["model"], spec.get("parameters")
    entries: dict[str, str] = {}
    failures: list[dict[str, str]] = []
    completed = size = 0
    for key, load in _loaders(host, batch):
        try:
            encoded = json.dumps(host.runner.run(model, load(), parameters), separators=(",", ":"))
            error: tuple[str, str] | None = None
        except UnknownModelError:
            raise  # no input of this shard could succeed: the shard fails as a whole
        except (ValidationError, ModelError) as exc:
            error = (classify(exc, worker=host.pod).reason, str(exc)[:1024])
        if error is None and size + len(encoded) > host.configmap_limit:
            error = (Reason.RESULT_TOO_LARGE.value,
                     f"the shard's results exceed the {host.configmap_limit} bytes a result ConfigMap may hold "
                     "(use a smaller spec.batch.shardSize)")
        if error is not None:
            encoded = json.dumps({"error": {"reason": error[0], "message": error[1]}}, separators=(",", ":"))
            failures.append({"key": key, "reason": error[0], "message": error[1][:256]})
        else:
            completed += 1
        entries[result_key(key)] = encoded
        size += len(encoded)
    name = result_configmap(output_prefix(str(shard["parent"]), batch.get("output")), int(shard["index"]))
    _write_results(host, body, name, entries)
    return {
        "model": model,
        "batch": {
            "index": int(shard["index"]),
            "completed": completed,
            "failed": len(failures),
            "failures": failures[:FAILURES_REPORTED],
            "output": f"configmap://{name}",
        },
    }


def _write_results(host: ShardHost, body: Mapping[str, Any], name: str, entries: dict[str, str]) -> None:
    """Create the shard's result ConfigMap, or replace its entries (a retried shard: the same keys)."""
    meta = body["metadata"]
    owner = [{"apiVersion": API_VERSION, "kind": TASK_KIND, "name": meta["name"], "uid": meta["uid"]}]
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": host.namespace, "labels": {LABEL_WORKER: host.pod},
                     "ownerReferences": owner},
        "data": entries,
    }
    path = f"/api/v1/namespaces/{host.namespace}/configmaps"
    try:
        host.request("POST", path, body=configmap)
    except ApiError as exc:
        if exc.status != 409:
            raise
        # A merge patch replaces the owner list and overwrites each key: the same entries as before.
        host.request("PATCH", f"{path}/{name}", body={"metadata": {"ownerReferences": owner}, "data": entries},
                     content_type=MERGE_PATCH)
