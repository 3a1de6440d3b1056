"""``legacygpu bench serve``: real-time inference throughput and latency, against the strongest references.

One run measures, for each model (``--models``: the demo digits MLP and a CNN
from onnx's package data, SqueezeNet by default) and each concurrency
(``--concurrency``, default 1, 8, 32, 64), requests of batch 1 sent for
``--seconds`` (default 3, after a warm-up) by that many concurrent clients,
each sending its next request when the last one is answered, through:

* ``facade``: ``POST /v2/models/<m>/infer`` on the facade of a local cluster
  (one onnxruntime worker, started with the same supervisor as
  ``legacygpu cluster start``), binary tensor data as Triton's client sends it;
* ``worker``: the same request straight to that worker's own endpoint;
* ``onnxruntime``: an ``InferenceSession`` on the same ONNX file in this
  process, called from as many threads (the floor any server adds to);
* ``ray`` (with ``--ray``): Ray Serve serving the same ONNX file with
  onnxruntime (:mod:`legacygpu.cli.bench_serve_ray`: a throwaway venv under
  ``.cache/``, made once), over HTTP with the tensor's bare float32 bytes.
* ``facade-opencl`` (the CNNs only, at ``--opencl-concurrency``, default 8
  and 32): the facade of a second local cluster whose one worker runs the
  OpenCL backend (PoCL on a machine without a GPU), the backend batching is
  meant for: each call pays per-operator launches that a batch shares;
* ceilings (the CNNs only, once per model): ``onnxruntime/in-process-batch``
  and ``opencl/in-process-batch``, the backend in this process called by one
  caller with ``--ceiling-batches`` images per call (default 1, 8, 32). The
  best of these in images per second, over the facade's batching-off
  throughput at 32 clients, is the most any batcher could give on this
  machine; :func:`targets` reports it beside the batching target.

All targets are up for the rest of the run and, at each concurrency, take
turns in an order rotated per level (:func:`run_benchmark`).

The facade's overhead over a direct worker call (at one client, batching off)
is measured on its own as well, when one client is among the levels: one
client takes turns between the facade, a bare TCP relay to the worker and the
worker itself, request by request, for ``--seconds`` each (``facade/paired``,
``relay/paired`` and ``worker/paired``, :func:`_paired_load`). The relay
(:mod:`legacygpu.cli.bench_relay`) parses nothing and only passes bytes on: what
it adds is what any process between client and worker costs here (a large body
through loopback twice more, on the same cores), the floor under the facade's
overhead. Measured one after the other, as the levels are, the
two p50s differ by whatever the machine's load did between the two points,
and by SqueezeNet's own spread (its interquartile range is wider than the
0.5 ms the target allows), so a difference from separate points cannot show
the target met; alternating puts the same load and spread on both, and a
bootstrap over runs of consecutive pairs gives the difference's 95% confidence
interval (:func:`paired_difference`). It runs first, for every model, while
the one cluster it measures is all that runs: before the OpenCL cluster and
Ray Serve start, and before any point has loaded the machine. The target is
the facade's own overhead, not what a third-party server's idle daemons (Ray
Serve keeps a dozen processes waking on timers) or the after-effects of the
64-client points add to it, on two cores where the facade's path (client,
facade and worker all busy at once while a body streams through) has no core
to spare. Measured last, as it was before, it ran at the run's highest load
average and answered fewer pairs per second than the same measurement alone.

Every server target runs twice: batching off and on (the model card's
``dynamic_batching``; ``@serve.batch`` for Ray, whose per-request access log
is turned off so that it does no work ours skips). Reported per point:
throughput (answered requests over the wall time), p25, p50, p75 and p99
latency (each request from send to full answer) and the load average after
it. The load generator is one asyncio process with one connection per client
(aiohttp's client: with httpx's, the load generator rather than the server
set the pace at 32 clients, alike for every target: the same worker answered
several times more requests per second to aiohttp's client); it shares the machine's cores with what it measures, the
same for every target. The issue's targets are computed from the points (:func:`targets`).
A table is printed; JSON and a PNG go to ``--out-dir`` with the host's cores
and load average before and after, since on a shared machine other work moves
the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import click
import httpx
import numpy as np

from legacygpu.cli import bench_serve_ray

if TYPE_CHECKING:
    from legacygpu.core.modelcards import DynamicBatchingSpec

__all__ = [
    "BOOTSTRAP_BLOCK",
    "BOOTSTRAP_RESAMPLES",
    "OPENCL_PREFERRED",
    "PAIRED_WARM_UP_SECONDS",
    "PREFERRED",
    "batching_spec",
    "command",
    "paired_difference",
    "targets",
    "write_report",
]

log = logging.getLogger(__name__)

_BATCHING = {"max_queue_delay_microseconds": round(bench_serve_ray.WAIT_SECONDS * 1e6)}  # as @serve.batch waits
_MAX_BATCH = bench_serve_ray.MAX_BATCH
OPENCL_PREFERRED = [2**i for i in range(1, _MAX_BATCH.bit_length()) if 2**i <= _MAX_BATCH]
"""The OpenCL worker's preferred batch sizes: the executor builds a plan per batch size, so batches keep to a few.
Not 1: a batch of a preferred size runs at once, so a lone request would skip the queue delay, which the
onnxruntime worker's copy (no preferred sizes) waits."""
PREFERRED = {"facade": [], "worker": [], "facade-opencl": OPENCL_PREFERRED}
"""Each target's preferred batch sizes (Ray's ``@serve.batch`` has none)."""
CEILINGS = {"facade": "onnxruntime/in-process-batch", "facade-opencl": "opencl/in-process-batch"}
"""For each facade whose batching gain is a target, the in-process run of its worker's backend that bounds it."""


def _is_cnn(model: str, vs_ray_model: str = "digits") -> bool:
    """Whether ``model`` has the batching target (every model but the MLP compared with Ray Serve)."""
    return model != vs_ray_model


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _summary(latencies: list[float], wall: float, errors: int) -> dict[str, Any]:
    return {
        "requests": len(latencies), "errors": errors, "wall_seconds": wall,
        "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        **{f"p{q}_ms": _percentile(latencies, q) * 1000 for q in (25, 50, 75, 99)},
        "load_after": os.getloadavg()[0],
    }


# models -------------------------------------------------------------------------------------------------


def _prepare(models: list[str], repo_root: Path, workdir: Path, *,
             preferred: Sequence[int] = ()) -> dict[str, dict[str, Any]]:
    """Each model twice in the repository: ``<m>`` batching, ``<m>-single`` not; returns path and one input.

    ``preferred``: the batching copy's preferred batch sizes (the batch sizes it runs when it can).
    """
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx
    from legacygpu.worker.opencl.bench_model import _with_dynamic_batch, resolve_model

    repo = ModelRepository(repo_root)
    prepared = {}
    for name in models:
        path = _with_dynamic_batch(resolve_model(name, workdir), workdir)
        card = card_from_onnx(name, path)
        spec = card.inputs[0]
        shape = [1, *[d if d > 0 else 1 for d in spec.shape[1:]]]
        x = np.random.default_rng(0).random(shape, dtype=np.float32) * (16 if name == "digits" else 1)
        single = card.model_copy(update={"name": f"{name}-single"})
        repo.add(single, path, replace=True)
        batching = card.model_copy(update={"max_batch_size": _MAX_BATCH, "dynamic_batching": batching_spec(preferred)})
        repo.add(batching, path, replace=True)
        prepared[name] = {"path": path, "input": spec.name, "x": x}
    return prepared


def batching_spec(preferred: Sequence[int] = ()) -> DynamicBatchingSpec:
    """The batching copy's ``dynamic_batching``: Ray's wait, and ``preferred`` batch sizes."""
    from legacygpu.core.modelcards import DynamicBatchingSpec

    return DynamicBatchingSpec.model_validate({**_BATCHING, "preferred_batch_size": list(preferred)})


def _binary_body(input_name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


# load generation --------------------------------------------------------------------------------------


async def _timed_post(client: Any, url: str, body: bytes, headers: dict[str, str]) -> float | None:
    """Seconds from sending ``body`` to ``url`` to the whole answer, or None when it was not a 200 (an error is
    logged and counted by the caller, as a client sees it)."""
    import aiohttp

    started = time.perf_counter()
    try:
        async with client.post(url, data=body, headers=headers) as response:
            await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("%s: %s: %s", url, type(exc).__name__, exc)
        return None
    return time.perf_counter() - started if status == 200 else None


async def _http_load(url: str, body: bytes, headers: dict[str, str], concurrency: int,
                     seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
        await _timed_post(client, url, body, headers)  # warm: load the model, open the connections
        await asyncio.gather(*(_timed_post(client, url, body, headers) for _ in range(concurrency)))
        deadline = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                latency = await _timed_post(client, url, body, headers)
                if latency is None:
                    errors += 1
                else:
                    latencies.append(latency)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return _summary(latencies, wall, errors)


async def _paired_load(targets: dict[str, tuple[str, dict[str, str]]], body: bytes,
                       seconds: float) -> dict[str, dict[str, Any]]:
    """One client taking turns between ``targets`` (each a name, a URL and its headers; one named ``worker``,
    the reference) for ``seconds`` per target, after a warm-up of :data:`PAIRED_WARM_UP_SECONDS` (ten rounds at
    least).

    The order of the turns rotates from one round to the next. Returns each target's point; its throughput is
    one over its mean latency (the targets share the wall time). Every point but the worker's also holds
    :func:`paired_difference` of it and the worker, as ``minus_worker_p50_ms`` and ``minus_worker_ci95_ms``.
    """
    import aiohttp

    latencies: dict[str, list[float]] = {name: [] for name in targets}
    errors = dict.fromkeys(targets, 0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def post(name: str, url: str, headers: dict[str, str]) -> float | None:
            latency = await _timed_post(client, url, body, headers)
            if latency is None:
                errors[name] += 1
            return latency

        order = [(name, *target) for name, target in targets.items()]
        warm_until = time.perf_counter() + PAIRED_WARM_UP_SECONDS
        for round_ in itertools.count():  # warm: load the model, open the connections, settle
            if round_ >= 10 and time.perf_counter() >= warm_until:
                break
            for turn in order:
                await post(*turn)
            order.append(order.pop(0))
        errors = dict.fromkeys(targets, 0)
        deadline = time.perf_counter() + len(targets) * seconds
        while time.perf_counter() < deadline:
            answered = {turn[0]: await post(*turn) for turn in order}
            if None not in answered.values():  # a round counts whole, or not at all
                for name, latency in answered.items():
                    latencies[name].append(cast(float, latency))
            order.append(order.pop(0))
    points = {name: _summary(values, sum(values), errors[name]) for name, values in latencies.items()}
    for name, point in points.items():
        if name != "worker":
            difference = paired_difference(latencies[name], latencies["worker"])
            point.update(minus_worker_p50_ms=difference[0] if difference else None,
                         minus_worker_ci95_ms=list(difference[1:]) if difference else None)
    return points


PAIRED_WARM_UP_SECONDS = 2.0
"""How long the paired run warms up (ten pairs at least) before it measures. It runs first, just after its cluster
started, and its first seconds there answered slower than the rest of the same run."""
BOOTSTRAP_RESAMPLES = 4000
"""Resamples of the paired bootstrap: with 200 the interval's ends moved by hundredths of a ms from one seed
to the next, with 4000 by thousandths (for about 1,500 pairs)."""
BOOTSTRAP_BLOCK = 50
"""Consecutive pairs drawn together by the paired bootstrap (a moving block)."""
_BOOTSTRAP_CHUNK = 1 << 20
"""Indices drawn at once (8 MiB of them, and the values they pick), whatever the number of pairs."""


def paired_difference(ours: Sequence[float], reference: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                      block: int = BOOTSTRAP_BLOCK) -> tuple[float, float, float] | None:
    """The p50 of ``ours`` minus the p50 of ``reference`` (seconds, paired by index), in ms, and its 95% interval.

    None without pairs. The interval is a moving-block bootstrap over the pairs: each resample joins
    runs of ``block`` consecutive pairs, from starts drawn with replacement (with a fixed seed), until it
    has as many pairs as the run; ``resamples`` such, and the 2.5th and 97.5th percentiles of their
    differences are its ends. Drawing pairs, not the two sides apart, keeps what both sides of a pair
    shared (the machine's load at that moment) out of the difference; drawing runs of them keeps a load
    burst that spans many pairs together, so it widens the interval as much as it moved the run, where
    pairs drawn one by one would spread it thin over every resample.
    """
    a, b = np.asarray(ours, dtype=float) * 1000, np.asarray(reference, dtype=float) * 1000
    n = len(a)
    if not n or n != len(b):
        return None
    size = min(block, n)
    blocks = -(-n // size)
    offsets = np.arange(size)
    rng = np.random.default_rng(0)
    differences = np.empty(resamples)
    rows = max(1, _BOOTSTRAP_CHUNK // (blocks * size))
    for first in range(0, resamples, rows):
        count = min(rows, resamples - first)
        starts = rng.integers(0, n - size + 1, (count, blocks, 1))
        picks = (starts + offsets).reshape(count, blocks * size)[:, :n]
        differences[first:first + count] = np.median(a[picks], axis=1) - np.median(b[picks], axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(np.median(a) - np.median(b)), float(low), float(high)


def _batched_load(run: Callable[[np.ndarray], Any], x: np.ndarray, batch: int, seconds: float) -> dict[str, Any]:
    """One caller running the model on ``batch`` images per call for ``seconds``, after a warm-up call.

    ``throughput_rps`` counts images, as if each were a request of batch 1; latencies are per call. The
    best of these over batch sizes is the most any batcher could get out of the model on this machine.
    """
    xs = np.repeat(x, batch, axis=0)
    run(xs)
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or not latencies:
        begun = time.perf_counter()
        run(xs)
        latencies.append(time.perf_counter() - begun)
    wall = time.perf_counter() - started
    return {**_summary(latencies, wall, 0), "throughput_rps": batch * len(latencies) / wall, "batch": batch}


def _ort_load(session: Any, input_name: str, x: np.ndarray, concurrency: int, seconds: float) -> dict[str, Any]:
    session.run(None, {input_name: x})
    deadline = time.perf_counter() + seconds

    def one_client() -> list[float]:
        latencies = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            session.run(None, {input_name: x})
            latencies.append(time.perf_counter() - started)
        return latencies

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for part in pool.map(lambda _: one_client(), range(concurrency)) for t in part]
    return _summary(latencies, time.perf_counter() - started, 0)


# the run ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_url(base: str, auth: dict[str, str]) -> str:
    """The serving endpoint the (one) worker registered with."""
    with httpx.Client(base_url=base, headers=auth) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = client.get("/cluster/workers").json()["data"]
            url = next((w["stats"]["serving"]["rest"] for w in workers if "serving" in w["stats"]), "")
            if url:
                return str(url)
            time.sleep(0.2)
    raise click.ClickException("the worker announced no serving endpoint within 60 s")


Run = Callable[[int], dict[str, Any]]
"""One point of a target: from the number of clients (or, for a ceiling, images per call) to its figures."""


@dataclass
class _Clusters:
    """The local clusters measured: one onnxruntime worker, and (for the CNNs) one OpenCL worker."""

    auth: dict[str, str]
    facade: str
    worker: str
    opencl: str | None = None
    ray: str | None = None


def _series(name: str, model: dict[str, Any], clusters: _Clusters, seconds: float, levels: list[int],
            opencl_levels: list[int]) -> dict[str, tuple[Run, list[int]]]:
    """Every target measured for ``name`` at client counts: a function from the number of clients to one point,
    and the client counts it is measured at."""
    body, headers = _binary_body(model["input"], model["x"])
    raw = model["x"].astype(np.float32).tobytes()
    auth = clusters.auth

    def http(url: str, content: bytes, sent: dict[str, str]) -> Run:
        return lambda c: asyncio.run(_http_load(url, content, sent, c, seconds))

    series: dict[str, tuple[Run, list[int]]] = {}
    for batching, suffix in (("off", "-single"), ("on", "")):
        series[f"facade/batching-{batching}"] = (http(f"{clusters.facade}/v2/models/{name}{suffix}/infer", body,
                                                      {**headers, **auth}), levels)
        series[f"worker/batching-{batching}"] = (http(f"{clusters.worker}/v2/models/{name}{suffix}/infer", body,
                                                      headers), levels)
        if clusters.opencl is not None and _is_cnn(name) and opencl_levels:
            series[f"facade-opencl/batching-{batching}"] = (
                http(f"{clusters.opencl}/v2/models/{name}{suffix}/infer", body, {**headers, **auth}), opencl_levels)
    series["onnxruntime/in-process"] = (
        lambda c: _ort_load(model["session"], model["input"], model["x"], c, seconds), levels)
    if clusters.ray is not None:
        for batching, route in (("off", "single"), ("on", "batched")):
            series[f"ray/batching-{batching}"] = (http(f"{clusters.ray}/{name}/{route}", raw,
                                                       {"Content-Type": "application/octet-stream"}), levels)
    return series


def _ceilings(name: str, model: dict[str, Any], opencl: bool, seconds: float) -> dict[str, Run]:
    """The in-process ceilings of the CNN's batching targets: each backend alone, from images per call to a point."""
    if not _is_cnn(name):
        return {}
    from legacygpu.worker.backends import create_backend

    def ceiling(backend: str) -> Run:
        """The backend as a worker runs it (its session options, its plans), loaded on first use."""
        loaded: list[Any] = []

        def run(xs: np.ndarray) -> Any:
            if not loaded:
                loaded.append(create_backend(backend).load(model["path"]))
            return loaded[0].run({model["input"]: xs})

        return lambda b: _batched_load(run, model["x"], b, seconds)

    ceilings = {CEILINGS["facade"]: ceiling("onnxruntime")}
    if opencl:
        ceilings[CEILINGS["facade-opencl"]] = ceiling("opencl")
    return ceilings


def _cluster(stack: contextlib.ExitStack, data: Path, token: str, backend: str) -> tuple[str, str]:
    """A local cluster of one ``backend`` worker, stopped with ``stack``: its facade's and its worker's URLs."""
    from legacygpu.cli.supervisor import Supervisor

    supervisor = Supervisor(data_dir=data, host="127.0.0.1", port=_free_port(), devices=[None], token=token,
                            backend=backend)
    stack.callback(supervisor.shutdown)
    supervisor.start()
    if supervisor.wait_for_workers() < 1:
        raise click.ClickException(f"the {backend} worker did not register; see {data / 'logs'}")
    return supervisor.url, _worker_url(supervisor.url, {"Authorization": f"Bearer {token}"})


def run_benchmark(models: list[str], levels: list[int], seconds: float, ray: bool, ray_venv: Path, *,
                  opencl_levels: Sequence[int] = (), ceiling_batches: Sequence[int] = ()) -> dict[str, Any]:
    """Every target at every level; at each level the targets take turns, in an order rotated per level.

    First, with one client among the levels, the facade's overhead for every model (:func:`_overhead`),
    while only the onnxruntime cluster runs (the module's docstring says why). Then Ray Serve and the
    local clusters run side by side for the rest of the run (each idle while the other is measured), so
    that a change in the machine's load between the first and last minute of the run falls on all targets
    alike rather than on whichever was measured last. The OpenCL worker (a cluster of its own, with the
    same models) serves the CNNs only, at ``opencl_levels``; the in-process ceilings (``ceiling_batches``
    images per call) are measured once per CNN, before its levels.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        prepared = _prepare(models, workdir / "data" / "models", workdir)
        for model in prepared.values():
            model["session"] = ort.InferenceSession(str(model["path"]), providers=["CPUExecutionProvider"])
        python = bench_serve_ray.python(ray_venv) if ray else None
        token = secrets.token_urlsafe(24)
        facade, worker = _cluster(stack, workdir / "data", token, "onnxruntime")
        clusters = _Clusters({"Authorization": f"Bearer {token}"}, facade, worker)
        overheads = ({name: _overhead(name, model, clusters, seconds) for name, model in prepared.items()}
                     if 1 in levels else {})  # before anything else starts (the module's docstring)
        opencl = bool(opencl_levels) and any(_is_cnn(name) for name in prepared)
        if opencl:
            _prepare([m for m in models if _is_cnn(m)], workdir / "opencl" / "models", workdir,
                     preferred=OPENCL_PREFERRED)
            clusters.opencl = _cluster(stack, workdir / "opencl", token, "opencl")[0]
        if python is not None:
            clusters.ray = stack.enter_context(bench_serve_ray.serving(python, workdir, prepared))
        results: dict[str, Any] = {}
        for name, model in prepared.items():
            series = _series(name, model, clusters, seconds, levels, list(opencl_levels))
            results[name] = {target: [] for target in series}
            for target, run in _ceilings(name, model, opencl, seconds).items():
                results[name][target] = [_logged(name, target, b, run(b)) for b in ceiling_batches]
            order = list(series)
            for i, c in enumerate(sorted({c for _, at in series.values() for c in at})):
                for target in order[i % len(order):] + order[: i % len(order)]:
                    run, at = series[target]
                    if c in at:
                        results[name][target].append(_logged(name, target, c, run(c)))
            results[name].update(overheads.get(name, {}))
    return results


def _overhead(name: str, model: dict[str, Any], clusters: _Clusters, seconds: float) -> dict[str, list[dict[str, Any]]]:
    """The overhead target's own measurement (the module's docstring): ``facade/paired``, ``relay/paired`` and
    ``worker/paired``."""
    body, headers = _binary_body(model["input"], model["x"])
    path = f"/v2/models/{name}-single/infer"
    with _relay(clusters.worker) as relay:
        points = asyncio.run(_paired_load({"facade": (clusters.facade + path, {**headers, **clusters.auth}),
                                           "relay": (relay + path, headers),
                                           "worker": (clusters.worker + path, headers)}, body, seconds))
    return {f"{target}/paired": [_logged(name, f"{target}/paired", 1, point)] for target, point in points.items()}


@contextlib.contextmanager
def _relay(worker: str) -> Iterator[str]:
    """A bare TCP relay to ``worker`` in a process of its own (:mod:`legacygpu.cli.bench_relay`): its URL."""
    parts = urlsplit(worker)
    process = subprocess.Popen([sys.executable, "-m", "legacygpu.cli.bench_relay", parts.hostname or "",
                                str(parts.port or 80)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        if not port.isdigit():
            raise click.ClickException(f"the relay did not start (exit code {process.wait()})")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _logged(name: str, target: str, c: int, point: dict[str, Any]) -> dict[str, Any]:
    log.info("%-11s %-28s %s=%-3d %8.1f req/s  p50 %8.2f ms  p99 %8.2f ms  errors %d  load %.1f",
             name, target, "batch" if "batch" in point else "c", c, point["throughput_rps"], point["p50_ms"],
             point["p99_ms"], point["errors"], point["load_after"])
    return {"concurrency": 1 if "batch" in point else c, **point}


def _point(results: dict[str, Any], model: str, target: str, concurrency: int) -> dict[str, Any] | None:
    return next((p for p in results.get(model, {}).get(target, []) if p["concurrency"] == concurrency), None)


def _best(results: dict[str, Any], model: str, server: str, concurrency: int) -> tuple[str, dict[str, Any]] | None:
    """The batching setting of ``server`` with the highest throughput at ``concurrency``, and its point."""
    found = [(t, p) for t in (f"{server}/batching-off", f"{server}/batching-on")
             if (p := _point(results, model, t, concurrency)) is not None]
    return max(found, key=lambda tp: tp[1]["throughput_rps"]) if found else None


def targets(results: dict[str, Any], *, vs_ray_model: str = "digits", concurrency: int = 32) -> list[dict[str, Any]]:
    """Issue 10's three targets, each with its measured value and whether it is met.

    * facade vs Ray Serve: on ``vs_ray_model`` at ``concurrency``, the facade's better batching setting
      against Ray Serve's better one: at least 5x the throughput and a lower p50;
    * facade overhead: facade p50 minus worker p50 at one client, batching off, per model: at most 0.5 ms.
      From the paired points where the run has them (``facade/paired``, ``worker/paired``): met when the
      upper end of the difference's 95% interval is at most 0.5 ms; beside it (``relay_ms``, ``relay_ci95_ms``)
      what a bare TCP relay in the same run adds over the worker (``relay/paired``): the floor under any
      proxy's overhead on this machine (:mod:`legacygpu.cli.bench_relay`). Else (a run from before them) from the
      two separate points, and not met while the difference is within noise (smaller than the wider
      interquartile range of the two points: then the run cannot tell, and a negative overhead is only noise);
    * batching: on every other model (the CNN) at ``concurrency``, facade throughput with batching on over
      off: at least 3x, for each facade measured (:data:`CEILINGS`: its onnxruntime worker and its OpenCL one).
      Beside it, from the in-process points (one caller, no server): ``ceiling``, the backend's best
      throughput over the batch sizes tried, over the facade's batching-off throughput (no batcher can serve
      faster than the backend runs alone); and ``in_process_gain``, that best over the backend's own
      throughput at one image per call: how much faster an image runs in a batch than alone, what batching
      saves inside the model. A served request saves that, plus a share of the per-call costs around the
      model (hand-off to its thread, session call); its HTTP and decoding it still pays alone. Where
      ``in_process_gain`` is near 1 the model itself gives batching little to win on this machine.
    """
    out: list[dict[str, Any]] = []
    ours, ray = _best(results, vs_ray_model, "facade", concurrency), _best(results, vs_ray_model, "ray", concurrency)
    if ours and ray:
        ratio = ours[1]["throughput_rps"] / ray[1]["throughput_rps"]
        out.append({"name": "facade_over_ray_throughput", "model": vs_ray_model, "concurrency": concurrency,
                    "ours": ours[0], "reference": ray[0], "value": ratio, "threshold": ">= 5 and lower p50",
                    "p50_ms": [ours[1]["p50_ms"], ray[1]["p50_ms"]],
                    "met": ratio >= 5 and ours[1]["p50_ms"] < ray[1]["p50_ms"]})
    for model in results:
        facade = _point(results, model, "facade/batching-off", 1)
        worker = _point(results, model, "worker/batching-off", 1)
        paired = _point(results, model, "facade/paired", 1)
        if paired and "minus_worker_ci95_ms" in paired:
            interval = paired["minus_worker_ci95_ms"]  # None: no pair was answered on both sides
            row = {"name": "facade_overhead_p50_ms", "model": model, "concurrency": 1,
                   "ours": "facade/paired", "reference": "worker/paired", "value": paired["minus_worker_p50_ms"],
                   "threshold": "<= 0.5", "ci95_ms": interval, "met": interval is not None and interval[1] <= 0.5}
            relay = _point(results, model, "relay/paired", 1)
            if relay and relay.get("minus_worker_ci95_ms"):
                row["relay_ms"] = relay["minus_worker_p50_ms"]
                row["relay_ci95_ms"] = relay["minus_worker_ci95_ms"]
            out.append(row)
        elif facade and worker:
            overhead = facade["p50_ms"] - worker["p50_ms"]
            noise = max(p["p75_ms"] - p["p25_ms"] for p in (facade, worker))
            out.append({"name": "facade_overhead_p50_ms", "model": model, "concurrency": 1,
                        "ours": "facade/batching-off", "reference": "worker/batching-off",
                        "value": overhead, "threshold": "<= 0.5", "noise_ms": noise,
                        "within_noise": abs(overhead) < noise, "met": overhead <= 0.5 and abs(overhead) >= noise})
        if not _is_cnn(model, vs_ray_model):
            continue
        for server, ceiling_target in CEILINGS.items():
            on = _point(results, model, f"{server}/batching-on", concurrency)
            off = _point(results, model, f"{server}/batching-off", concurrency)
            if on and off:
                gain = on["throughput_rps"] / off["throughput_rps"]
                row = {"name": "batching_throughput_gain", "model": model, "concurrency": concurrency,
                       "ours": f"{server}/batching-on", "reference": f"{server}/batching-off", "value": gain,
                       "threshold": ">= 3", "met": gain >= 3}
                best = max(results[model].get(ceiling_target, []), key=lambda p: p["throughput_rps"], default=None)
                if best is not None:
                    row["ceiling"] = best["throughput_rps"] / off["throughput_rps"]
                    row["ceiling_from"] = f"{ceiling_target}, {best['batch']} per call"
                    single = next((p for p in results[model][ceiling_target] if p["batch"] == 1), None)
                    if single is not None:
                        row["in_process_gain"] = best["throughput_rps"] / single["throughput_rps"]
                out.append(row)
    return out


def target_notes(target: dict[str, Any]) -> str:
    """What a target of :func:`targets` says beside its value (its ceiling, the in-process batch gain, its
    interval), for the printed summary and the docs' table alike."""
    notes = ""
    if "ceiling" in target:
        notes += f"; at most {target['ceiling']:.3g}x here ({target['ceiling_from']})"
    if "in_process_gain" in target:
        notes += f"; in process a batch runs {target['in_process_gain']:.3g}x faster per image than one alone"
    if target.get("ci95_ms"):
        low, high = target["ci95_ms"]
        notes += f" (95% interval {low:.3g} to {high:.3g} ms, requests alternating)"
    if "relay_ms" in target:
        low, high = target["relay_ci95_ms"]
        notes += (f"; a bare TCP relay in the same turns adds {target['relay_ms']:.3g} ms "
                  f"({low:.3g} to {high:.3g})")
    return notes


def write_report(path: Path, report: dict[str, Any]) -> None:
    """``report`` as JSON, a figure that could not be measured (NaN: no answered request) as null."""
    path.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'model':<11} {'target':<28} {'conc':>4} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}"]
    for model, series in results.items():
        for target, points in series.items():
            for p in points:
                clients = f"b{p['batch']}" if "batch" in p else p["concurrency"]
                lines.append(f"{model:<11} {target:<28} {clients:>4} {p['throughput_rps']:>9.1f} "
                             f"{p['p50_ms']:>9.2f} {p['p99_ms']:>9.2f} {p['errors']:>6}")
    return "\n".join(lines)


def _plot(path: Path, results: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4 * len(results)), squeeze=False)
    for row, (model, targets) in enumerate(results.items()):
        for target, points in targets.items():
            if any("batch" in p for p in points) or target.endswith("/paired"):
                continue  # a ceiling (images per call, not clients), or the overhead's own run
            cs = [p["concurrency"] for p in points]
            axes[row][0].plot(cs, [p["throughput_rps"] for p in points], marker="o", label=target)
            axes[row][1].plot(cs, [p["p50_ms"] for p in points], marker="o", label=target)
        axes[row][0].set(title=f"{model}: throughput", xlabel="concurrent clients", ylabel="requests/s", xscale="log",
                         yscale="log")  # onnxruntime in-process is orders of magnitude above the servers
        axes[row][1].set(title=f"{model}: p50 latency", xlabel="concurrent clients", ylabel="ms", xscale="log",
                         yscale="log")
        axes[row][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _counts(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of whole numbers") from exc


@click.command("serve")
@click.option("--models", default="digits,squeezenet", show_default=True,
              help="Comma-separated: digits, or a model `bench model` knows (squeezenet, resnet50, open_nsfw, ...).")
@click.option("--concurrency", default="1,8,32,64", show_default=True, help="Comma-separated client counts.")
@click.option("--seconds", default=3.0, show_default=True, help="Seconds each point sends for (after a warm-up).")
@click.option("--opencl-concurrency", default="8,32", show_default=True,
              help="Client counts for the CNN through a second cluster whose worker runs the OpenCL backend "
                   "(PoCL here); empty: no OpenCL worker.")
@click.option("--ceiling-batches", default="1,8,32", show_default=True,
              help="Images per call for the CNN's in-process ceilings (onnxruntime, and OpenCL if measured).")
@click.option("--ray/--no-ray", default=True, show_default=True,
              help="Also measure Ray Serve (installed into a throwaway venv the first time).")
@click.option("--ray-venv", type=click.Path(file_okay=False, path_type=Path), default=Path(".cache/bench-serve-ray"),
              show_default=True, help="Where the throwaway Ray Serve venv lives (made on first use).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("docs/benchmarks/serve"), show_default=True, help="Where serve.json and serve.png go.")
def command(models: str, concurrency: str, opencl_concurrency: str, ceiling_batches: str, seconds: float, ray: bool,
            ray_venv: Path, out_dir: Path) -> None:
    """Throughput and latency of /v2 through the facade, to a worker, onnxruntime alone and Ray Serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    levels = _counts(concurrency)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    load_before = os.getloadavg()
    results = run_benchmark([m.strip() for m in models.split(",")], levels, seconds, ray, ray_venv.resolve(),
                            opencl_levels=_counts(opencl_concurrency), ceiling_batches=_counts(ceiling_batches))
    found = targets(results)
    report = {
        "command": "legacygpu bench serve " + " ".join(sys.argv[3:]),
        "started": started, "seconds": round(time.monotonic() - clock),
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "load_before": load_before,
                 "load_after": os.getloadavg(), "python": platform.python_version()},
        "seconds_per_point": seconds, "ray_version": bench_serve_ray.RAY_VERSION if ray else None,
        "batching": {"max_batch_size": _MAX_BATCH, **_BATCHING, "preferred_batch_size": PREFERRED},
        "opencl_concurrency": _counts(opencl_concurrency), "ceiling_batches": _counts(ceiling_batches),
        "results": results, "targets": found,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(out_dir / "serve.json", report)
    load = ", ".join(f"{v:.1f}" for v in load_before)
    _plot(out_dir / "serve.png", results, f"legacygpu bench serve, {os.cpu_count()} cores, load before {load}")
    click.echo(_table(results))
    for t in found:
        value = "none measured" if t["value"] is None else f"{t['value']:.3g}"
        click.echo(f"target {t['name']} ({t['model']}, {t['ours']}, c={t['concurrency']}): {value} "
                   f"(wanted {t['threshold']}{target_notes(t)}): {'met' if t['met'] else 'NOT met'}")
    click.echo(f"load average before {load}, after {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
               f"wrote {out_dir / 'serve.json'} and {out_dir / 'serve.png'}")
