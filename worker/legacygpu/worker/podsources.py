"""A worker pod's ``spec.modelSources``: fetched before its models are preloaded, progress on the pod.

``legacygpu worker start --kubernetes`` calls :func:`fetch_pod_sources`
before it preloads its models and opens its task watch, so the pod stays
unready (its ``/v2/health/ready`` answers 503) until every source is fetched
or has failed. Meanwhile the worker's stats annotation
(:data:`~legacygpu.core.kube.contract.ANNOTATION_WORKER_STATS`) carries
``modelFetch``: per model its phase, bytes, total and percent, written when
a phase changes and at most once a second in between; the operator shows
it in the cluster's ``WorkersReady`` message. Sources that fail are left out
of the repository and their reasons go to the runner's ``model_errors``,
which the worker publishes as ``modelErrors`` once it runs (the cluster
then says ``Degraded/ModelLoadFailed`` with the reason).

ConfigMaps the volume does not hold (yet) are read through the API, like
``inputsUri: configmap://`` (the worker's Role may get ConfigMaps).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes

from legacygpu.core.errors import LegacyGPUError, ValidationError
from legacygpu.core.kube.batch import configmap_entry, configmap_keys
from legacygpu.core.kube.client import MERGE_PATCH, request_json
from legacygpu.core.kube.contract import ANNOTATION_WORKER_STATS, ModelFetchStatus
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.modelsources import CACHE_DIR, CACHE_ENV, SOURCES_DIR, SOURCES_DIR_ENV, SOURCES_ENV, load_sources
from legacygpu.worker.modelfetch import FetchError, ModelFetcher, prepare_repository
from legacygpu.worker.runner import TaskRunner

__all__ = ["fetch_pod_sources"]

log = logging.getLogger(__name__)
PUBLISH_INTERVAL = 1.0


class _Publisher:
    """Keeps ``modelFetch`` and writes it to the pod's stats annotation (a progress callback)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, pod: str) -> None:
        self.api, self.path = api, f"/api/v1/namespaces/{namespace}/pods/{pod}"
        self.progress: dict[str, ModelFetchStatus] = {}
        self._sent = 0.0
        self._lock = threading.Lock()

    def __call__(self, name: str, status: ModelFetchStatus) -> None:
        with self._lock:
            changed = (self.progress.get(name) or {}).get("phase") != status.get("phase")
            self.progress[name] = status
            if changed or time.monotonic() - self._sent >= PUBLISH_INTERVAL:
                self.publish()

    def publish(self) -> None:
        stats = {"modelFetch": self.progress}
        try:
            request_json(self.api, "PATCH", self.path, content_type=MERGE_PATCH,
                         body={"metadata": {"annotations": {ANNOTATION_WORKER_STATS: json.dumps(stats)}}})
            self._sent = time.monotonic()
        except Exception as exc:  # progress is informative: never stop a fetch for it
            log.debug("could not publish fetch progress: %s", exc)


def _configmap_reader(api: kubernetes.client.ApiClient, namespace: str) -> Callable[[str, str], bytes]:
    def read(name: str, key: str) -> bytes:
        try:
            body = request_json(api, "GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except kubernetes.client.ApiException as exc:
            raise FetchError(f"configmap://{name}/{key}: ConfigMap {namespace}/{name}: HTTP {exc.status} "
                             f"{exc.reason}") from exc
        try:
            raw = configmap_entry(body, key)
        except ValidationError as exc:
            raise FetchError(f"configmap://{name}/{key}: {exc}") from exc
        if raw is None:
            raise FetchError(f"configmap://{name}/{key}: ConfigMap {namespace}/{name} has no key {key!r} "
                             f"(it has: {', '.join(configmap_keys(body)) or 'none'})")
        return raw

    return read


def fetch_pod_sources(
    runner: TaskRunner, *, api_client: kubernetes.client.ApiClient, namespace: str, pod: str
) -> dict[str, ModelFetchStatus]:
    """Fetch the sources in ``$LEGACYGPU_MODEL_SOURCES`` and serve ``runner`` from the repository built.

    Returns the last ``modelFetch`` status of each source (empty without sources).
    """
    text = os.environ.get(SOURCES_ENV, "")
    if not text.strip():
        return {}
    try:
        sources = load_sources(text)
    except LegacyGPUError as exc:  # the CRD's schema refuses these: only a hand-made pod gets here
        log.error("%s is not valid, no model fetched: %s", SOURCES_ENV, exc)
        return {}
    publisher = _Publisher(api_client, namespace, pod)
    fetcher = ModelFetcher(
        cache_dir=Path(os.environ.get(CACHE_ENV) or CACHE_DIR),
        sources_dir=Path(os.environ.get(SOURCES_DIR_ENV) or SOURCES_DIR),
        progress=publisher,
        read_configmap=_configmap_reader(api_client, namespace),
    )
    log.info("fetching %d model source(s) into %s", len(sources), fetcher.cache_dir)
    report = prepare_repository(sources, base=runner.repository.root, fetcher=fetcher)
    runner.repository = ModelRepository(report.root)
    runner.model_errors.update(report.errors)
    publisher.publish()
    return dict(publisher.progress)
