"""A model is ready through the facade when at least one of its workers has it loaded, not all of them.

A facade process and two worker processes on loopback. Nothing preloads the digits model, so a
worker has it loaded only once it ran it or was told to load it; the test loads and unloads it
on one worker directly (the worker's own repository extension, which the facade's load and unload
would send to every worker), and asks the facade, over REST and gRPC, what is ready and where its
inferences go.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as triton_grpc
from helpers import SAMPLES, TOKEN, LocalCluster, image_tensor, serving_cluster, wait_until

from legacygpu.api.forwarding import Forwarder

pytestmark = pytest.mark.slow

REFRESH_SECONDS: float = inspect.signature(Forwarder).parameters["refresh_seconds"].default
"""How long the facade keeps its list of workers and their loaded models (``Forwarder``'s default)."""


@pytest.fixture
def cluster(data_dir: Path) -> Iterator[LocalCluster]:
    with serving_cluster(data_dir, env={"LEGACYGPU_PRELOAD_MODELS": ""}) as c:
        yield c


def _ready(cluster: LocalCluster) -> httpx.Response:
    return cluster.http.get("/v2/models/digits/ready")


def _state(cluster: LocalCluster) -> str:
    [entry] = [e for e in cluster.http.post("/v2/repository/index", json={}).json() if e["name"] == "digits"]
    return str(entry["state"])


def _grpc_ready(cluster: LocalCluster) -> bool:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{cluster.grpc_port}")
    try:
        return bool(client.is_model_ready("digits", headers={"authorization": f"Bearer {TOKEN}"}))
    finally:
        client.close()


def _successes(url: str) -> float:
    """The worker's count of digits requests answered with a result (its own /metrics)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('legacygpu_inference_request_success_total{model="digits"}'):
            return float(line.split()[-1])
    return 0.0


def _loaded(cluster: LocalCluster, name: str) -> list[Any]:
    return list((cluster.worker(name) or {}).get("stats", {}).get("models_loaded") or [])


def test_ready_when_one_of_two_workers_has_it_loaded_and_inferences_go_to_that_one(cluster: LocalCluster) -> None:
    urls = {name: cluster.serving(name)["rest"].rstrip("/") for name in ("w1", "w2")}
    # Loaded on the worker that the facade's tie-break (lowest URL) would pass over: a facade that did not
    # prefer the worker with the model would send the requests below to the other one.
    holder = max(urls, key=lambda n: urls[n])
    other = min(urls, key=lambda n: urls[n])

    assert _ready(cluster).status_code == 503 and _state(cluster) == "UNAVAILABLE"  # loaded on neither
    assert not _grpc_ready(cluster)

    assert httpx.post(f"{urls[holder]}/v2/repository/models/digits/load", timeout=60).status_code == 200
    ready = _ready(cluster)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert _state(cluster) == "READY"
    assert _grpc_ready(cluster)
    assert httpx.get(f"{urls[other]}/v2/models/digits/ready").status_code == 503, "the other has not loaded it"

    wait_until(lambda: _loaded(cluster, holder) == ["digits"], timeout=30, what=f"{holder} to report digits loaded")
    time.sleep(REFRESH_SECONDS + 0.5)  # the facade's list of workers and their models is read again by then
    before = {name: _successes(url) for name, url in urls.items()}
    for _ in range(6):
        answer = cluster.http.post("/v2/models/digits/infer",
                                   json={"inputs": [image_tensor(SAMPLES / "digit-2.png")]})
        assert answer.status_code == 200, answer.text
        assert next(o for o in answer.json()["outputs"] if o["name"] == "label")["data"] == [2]
    assert _successes(urls[holder]) - before[holder] == 6
    assert _successes(urls[other]) == before[other], "an inference went to the worker without the model"
    assert httpx.get(f"{urls[other]}/v2/models/digits/ready").status_code == 503, "nothing made it load the model"

    assert httpx.post(f"{urls[holder]}/v2/repository/models/digits/unload", timeout=60).status_code == 200
    assert _ready(cluster).status_code == 503
    assert _state(cluster) == "UNAVAILABLE"
    assert not _grpc_ready(cluster)
