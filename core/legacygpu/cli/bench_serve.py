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

All targets are up for the whole run and, at each concurrency, take turns in
an order rotated per level (:func:`run_benchmark`).

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
import json
import logging
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np

from legacygpu.cli import bench_serve_ray

__all__ = ["command", "targets"]

log = logging.getLogger(__name__)

_BATCHING = {"max_queue_delay_microseconds": round(bench_serve_ray.WAIT_SECONDS * 1e6)}  # as @serve.batch waits
_MAX_BATCH = bench_serve_ray.MAX_BATCH


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


def _prepare(models: list[str], repo_root: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """Each model twice in the repository: ``<m>`` batching, ``<m>-single`` not; returns path and one input."""
    from legacygpu.core.modelcards import DynamicBatchingSpec, ModelRepository
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
        batching = card.model_copy(update={"max_batch_size": _MAX_BATCH,
                                           "dynamic_batching": DynamicBatchingSpec.model_validate(_BATCHING)})
        repo.add(batching, path, replace=True)
        prepared[name] = {"path": path, "input": spec.name, "x": x}
    return prepared


def _binary_body(input_name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype(np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


# load generation --------------------------------------------------------------------------------------


async def _http_load(url: str, body: bytes, headers: dict[str, str], concurrency: int,
                     seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def post() -> int:
            async with client.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        await post()  # warm: load the model, open the connections
        await asyncio.gather(*(post() for _ in range(concurrency)), return_exceptions=True)
        deadline = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    status = await post()
                except (TimeoutError, aiohttp.ClientError) as exc:  # counted, as a client sees it
                    log.warning("%s: %s: %s", url, type(exc).__name__, exc)
                    errors += 1
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return _summary(latencies, wall, errors)


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


def _series(name: str, model: dict[str, Any], facade: str, auth: dict[str, str], worker: str,
            ray: str | None, seconds: float) -> dict[str, Run]:
    """Every target measured for ``name``: a function from the number of clients to one point."""
    body, headers = _binary_body(model["input"], model["x"])
    raw = model["x"].astype(np.float32).tobytes()

    def http(url: str, content: bytes, sent: dict[str, str]) -> Run:
        return lambda c: asyncio.run(_http_load(url, content, sent, c, seconds))

    series: dict[str, Run] = {}
    for batching, suffix in (("off", "-single"), ("on", "")):
        series[f"facade/batching-{batching}"] = http(f"{facade}/v2/models/{name}{suffix}/infer", body,
                                                     {**headers, **auth})
        series[f"worker/batching-{batching}"] = http(f"{worker}/v2/models/{name}{suffix}/infer", body, headers)
    series["onnxruntime/in-process"] = lambda c: _ort_load(model["session"], model["input"], model["x"], c, seconds)
    if ray is not None:
        for batching, route in (("off", "single"), ("on", "batched")):
            series[f"ray/batching-{batching}"] = http(f"{ray}/{name}/{route}", raw,
                                                      {"Content-Type": "application/octet-stream"})
    return series


def run_benchmark(models: list[str], levels: list[int], seconds: float, ray: bool, ray_venv: Path) -> dict[str, Any]:
    """Every target at every level; at each level the targets take turns, in an order rotated per level.

    Ray Serve and the local cluster run side by side for the whole run (each idle while the other is
    measured), so that a change in the machine's load between the first and last minute of the run
    falls on all targets alike rather than on whichever was measured last.
    """
    import onnxruntime as ort

    from legacygpu.cli.supervisor import Supervisor

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        prepared = _prepare(models, workdir / "data" / "models", workdir)
        for model in prepared.values():
            model["session"] = ort.InferenceSession(str(model["path"]), providers=["CPUExecutionProvider"])
        python = bench_serve_ray.python(ray_venv) if ray else None
        token = secrets.token_urlsafe(24)
        supervisor = Supervisor(data_dir=workdir / "data", host="127.0.0.1", port=_free_port(), devices=[None],
                                token=token, backend="onnxruntime")
        stack.callback(supervisor.shutdown)
        supervisor.start()
        if supervisor.wait_for_workers() < 1:
            raise click.ClickException(f"the worker did not register; see {workdir / 'data' / 'logs'}")
        auth = {"Authorization": f"Bearer {token}"}
        worker_url = _worker_url(supervisor.url, auth)
        ray_url = None
        if python is not None:
            ray_url = stack.enter_context(bench_serve_ray.serving(python, workdir, prepared))
        results: dict[str, Any] = {}
        for name, model in prepared.items():
            series = _series(name, model, supervisor.url, auth, worker_url, ray_url, seconds)
            results[name] = {target: [] for target in series}
            order = list(series)
            for i, c in enumerate(levels):
                for target in order[i % len(order):] + order[: i % len(order)]:
                    point = series[target](c)
                    log.info("%-11s %-24s c=%-3d %8.1f req/s  p50 %8.2f ms  p99 %8.2f ms  errors %d  load %.1f",
                             name, target, c, point["throughput_rps"], point["p50_ms"], point["p99_ms"],
                             point["errors"], point["load_after"])
                    results[name][target].append({"concurrency": c, **point})
    return results


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
    * facade overhead: facade p50 minus worker p50 at one client, batching off, per model: at most 0.5 ms,
      and not met while the difference is within noise (smaller than the wider interquartile range of the
      two points: then the run cannot tell, and a negative overhead is only noise);
    * batching: on every other model (the CNN) at ``concurrency``, facade throughput with batching on over
      off: at least 3x.
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
        if facade and worker:
            overhead = facade["p50_ms"] - worker["p50_ms"]
            noise = max(p["p75_ms"] - p["p25_ms"] for p in (facade, worker))
            out.append({"name": "facade_overhead_p50_ms", "model": model, "concurrency": 1,
                        "ours": "facade/batching-off", "reference": "worker/batching-off",
                        "value": overhead, "threshold": "<= 0.5", "noise_ms": noise,
                        "within_noise": abs(overhead) < noise, "met": overhead <= 0.5 and abs(overhead) >= noise})
        on, off = _point(results, model, "facade/batching-on", concurrency), _point(
            results, model, "facade/batching-off", concurrency)
        if model != vs_ray_model and on and off:
            gain = on["throughput_rps"] / off["throughput_rps"]
            out.append({"name": "batching_throughput_gain", "model": model, "concurrency": concurrency,
                        "ours": "facade/batching-on", "reference": "facade/batching-off", "value": gain,
                        "threshold": ">= 3", "met": gain >= 3})
    return out


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'model':<11} {'target':<24} {'conc':>4} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}"]
    for model, series in results.items():
        for target, points in series.items():
            for p in points:
                lines.append(f"{model:<11} {target:<24} {p['concurrency']:>4} {p['throughput_rps']:>9.1f} "
                             f"{p['p50_ms']:>9.2f} {p['p99_ms']:>9.2f} {p['errors']:>6}")
    return "\n".join(lines)


def _plot(path: Path, results: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4 * len(results)), squeeze=False)
    for row, (model, targets) in enumerate(results.items()):
        for target, points in targets.items():
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


@click.command("serve")
@click.option("--models", default="digits,squeezenet", show_default=True,
              help="Comma-separated: digits, or a model `bench model` knows (squeezenet, resnet50, open_nsfw, ...).")
@click.option("--concurrency", default="1,8,32,64", show_default=True, help="Comma-separated client counts.")
@click.option("--seconds", default=3.0, show_default=True, help="Seconds each point sends for (after a warm-up).")
@click.option("--ray/--no-ray", default=True, show_default=True,
              help="Also measure Ray Serve (installed into a throwaway venv the first time).")
@click.option("--ray-venv", type=click.Path(file_okay=False, path_type=Path), default=Path(".cache/bench-serve-ray"),
              show_default=True, help="Where the throwaway Ray Serve venv lives (made on first use).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("docs/benchmarks/serve"), show_default=True, help="Where serve.json and serve.png go.")
def command(models: str, concurrency: str, seconds: float, ray: bool, ray_venv: Path, out_dir: Path) -> None:
    """Throughput and latency of /v2 through the facade, to a worker, onnxruntime alone and Ray Serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    levels = [int(c) for c in concurrency.split(",")]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    load_before = os.getloadavg()
    results = run_benchmark([m.strip() for m in models.split(",")], levels, seconds, ray, ray_venv.resolve())
    report = {
        "command": "legacygpu bench serve " + " ".join(sys.argv[3:]),
        "started": started, "seconds": round(time.monotonic() - clock),
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "load_before": load_before,
                 "load_after": os.getloadavg(), "python": platform.python_version()},
        "seconds_per_point": seconds, "ray_version": bench_serve_ray.RAY_VERSION if ray else None,
        "batching": {"max_batch_size": _MAX_BATCH, **_BATCHING},
        "results": results, "targets": targets(results),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.json").write_text(json.dumps(report, indent=2))
    load = ", ".join(f"{v:.1f}" for v in load_before)
    _plot(out_dir / "serve.png", results, f"legacygpu bench serve, {os.cpu_count()} cores, load before {load}")
    click.echo(_table(results))
    for t in report["targets"]:
        click.echo(f"target {t['name']} ({t['model']}, c={t['concurrency']}): {t['value']:.3g} "
                   f"(wanted {t['threshold']}): {'met' if t['met'] else 'NOT met'}")
    click.echo(f"load average before {load}, after {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
               f"wrote {out_dir / 'serve.json'} and {out_dir / 'serve.png'}")
