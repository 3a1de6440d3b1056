"""``legacygpu bench serve``: real-time inference throughput and latency, against the strongest references.

One run measures, for each model (``--models``: the demo digits MLP and a CNN
from onnx's package data, SqueezeNet by default) and each concurrency
(``--concurrency``, default 1, 8, 32, 64), ``--requests`` requests of batch 1
sent by that many concurrent clients, through:

* ``facade``: ``POST /v2/models/<m>/infer`` on the facade of a local cluster
  (one onnxruntime worker, started with the same supervisor as
  ``legacygpu cluster start``), binary tensor data as Triton's client sends it;
* ``worker``: the same request straight to that worker's own endpoint;
* ``onnxruntime``: an ``InferenceSession`` on the same ONNX file in this
  process, called from as many threads (the floor any server adds to);
* ``ray`` (with ``--ray``): Ray Serve serving the same ONNX file with
  onnxruntime, installed by this command into a throwaway venv under
  ``.cache/``, over HTTP with the same raw float32 body.

Every server target runs twice: batching off and on (the model card's
``dynamic_batching``; ``@serve.batch`` for Ray). Reported per point:
throughput (requests/s over the wall time), p50 and p99 latency (each
request from send to full answer). The load generator is one asyncio
process with one connection per client; it shares the machine's cores with
what it measures, the same for every target. A table is printed; JSON and a
PNG go to ``--out-dir`` with the host's cores and load average before and
after, since on a shared machine other work moves the numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np

__all__ = ["command"]

log = logging.getLogger(__name__)

_BATCHING = {"max_queue_delay_microseconds": 2000}
_MAX_BATCH = 64
_RAY_VERSION = "2.40.0"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _summary(latencies: list[float], wall: float, errors: int) -> dict[str, Any]:
    return {
        "requests": len(latencies), "errors": errors, "wall_seconds": wall,
        "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": _percentile(latencies, 50) * 1000, "p99_ms": _percentile(latencies, 99) * 1000,
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
                     requests: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await client.post(url, content=body, headers=headers)  # warm: load the model, open a connection

        async def one_client() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return _summary(latencies, wall, errors)


def _ort_load(path: Path, input_name: str, x: np.ndarray, concurrency: int, requests: int) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session.run(None, {input_name: x})

    def once(_: int) -> float:
        started = time.perf_counter()
        session.run(None, {input_name: x})
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(once, range(requests)))
    return _summary(latencies, time.perf_counter() - started, 0)


# Ray Serve ----------------------------------------------------------------------------------------------

_RAY_APP = textwrap.dedent('''
    """Ray Serve serving one ONNX file with onnxruntime; written and run by legacygpu bench serve."""
    import sys, time
    import numpy as np, onnxruntime as ort, ray
    from ray import serve
    from starlette.responses import Response

    path, input_name, shape, port = sys.argv[1], sys.argv[2], [int(d) for d in sys.argv[3].split(",")], int(sys.argv[4])

    def session():
        return ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    @serve.deployment(max_ongoing_requests=256)
    class Single:
        def __init__(self):
            self.session = session()

        async def __call__(self, request):
            x = np.frombuffer(await request.body(), np.float32).reshape(shape)
            return Response(self.session.run(None, {input_name: x})[0].tobytes())

    @serve.deployment(max_ongoing_requests=256)
    class Batched:
        def __init__(self):
            self.session = session()

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
        async def run(self, xs):
            out = self.session.run(None, {input_name: np.concatenate(xs)})[0]
            return [out[i : i + 1] for i in range(len(xs))]

        async def __call__(self, request):
            x = np.frombuffer(await request.body(), np.float32).reshape(shape)
            return Response((await self.run(x)).tobytes())

    ray.init(num_cpus=2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Single.bind(), name="single", route_prefix="/single")
    serve.run(Batched.bind(), name="batched", route_prefix="/batched")
    print("ready", flush=True)
    while True:
        time.sleep(3600)
''')


def _ray_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        log.info("installing Ray Serve %s into %s (once)", _RAY_VERSION, venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"ray[serve]=={_RAY_VERSION}", "onnxruntime",
                        "numpy"], check=True)
    return python


def _start_ray(python: Path, workdir: Path, model: dict[str, Any], port: int) -> subprocess.Popen[str]:
    script = workdir / "ray_app.py"
    script.write_text(_RAY_APP)
    shape = ",".join(str(d) for d in model["x"].shape)
    process = subprocess.Popen([str(python), str(script), str(model["path"]), model["input"], shape, str(port)],
                               stdout=subprocess.PIPE, stderr=open(workdir / "ray.log", "w"), text=True)  # noqa: SIM115
    assert process.stdout is not None
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        raise click.ClickException(f"Ray Serve did not start; see {workdir / 'ray.log'}")
    return process


# the run ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _points(run: Callable[[int], Awaitable[dict[str, Any]] | dict[str, Any]], levels: list[int],
            label: str) -> list[dict[str, Any]]:
    points = []
    for c in levels:
        result = run(c)
        result = asyncio.run(result) if asyncio.iscoroutine(result) else result  # type: ignore[arg-type]
        assert isinstance(result, dict)
        log.info("%-28s c=%-3d %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d", label, c,
                 result["throughput_rps"], result["p50_ms"], result["p99_ms"], result["errors"])
        points.append({"concurrency": c, **result})
    return points


def run_benchmark(models: list[str], levels: list[int], requests: int, ray: bool, ray_venv: Path) -> dict[str, Any]:
    from legacygpu.cli.supervisor import Supervisor

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        prepared = _prepare(models, workdir / "data" / "models", workdir)
        token = secrets.token_urlsafe(24)
        supervisor = Supervisor(data_dir=workdir / "data", host="127.0.0.1", port=_free_port(), devices=[None],
                                token=token, backend="onnxruntime")
        try:
            supervisor.start()
            if supervisor.wait_for_workers() < 1:
                raise click.ClickException(f"the worker did not register; see {workdir / 'data' / 'logs'}")
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=supervisor.url, headers=auth) as client:
                worker_url = ""
                deadline = time.monotonic() + 60
                while not worker_url and time.monotonic() < deadline:
                    workers = client.get("/cluster/workers").json()["data"]
                    worker_url = next((w["stats"]["serving"]["rest"] for w in workers if "serving" in w["stats"]), "")
                    time.sleep(0.2)
            for name, model in prepared.items():
                body, headers = _binary_body(model["input"], model["x"])
                per_model: dict[str, Any] = {}
                for batching, suffix in (("off", "-single"), ("on", "")):
                    for target, base, extra in (("facade", supervisor.url, auth), ("worker", worker_url, {})):
                        url = f"{base}/v2/models/{name}{suffix}/infer"
                        label = f"{name} {target} batching {batching}"
                        per_model[f"{target}/batching-{batching}"] = _points(
                            lambda c, url=url, extra=extra, body=body, headers=headers: _http_load(
                                url, body, {**headers, **extra}, c, requests),
                            levels, label)
                per_model["onnxruntime/in-process"] = _points(
                    lambda c, m=model: _ort_load(m["path"], m["input"], m["x"], c, requests), levels,
                    f"{name} onnxruntime in-process")
                results[name] = per_model
        finally:
            supervisor.shutdown()
        if ray:
            python = _ray_python(ray_venv)
            for name, model in prepared.items():
                port = _free_port()
                process = _start_ray(python, workdir, model, port)
                try:
                    raw = model["x"].astype(np.float32).tobytes()
                    for batching, route in (("off", "single"), ("on", "batched")):
                        url = f"http://127.0.0.1:{port}/{route}"
                        results[name][f"ray/batching-{batching}"] = _points(
                            lambda c, url=url, raw=raw: _http_load(
                                url, raw, {"Content-Type": "application/octet-stream"}, c, requests),
                            levels, f"{name} ray batching {batching}")
                finally:
                    process.terminate()
                    process.wait(30)
    return results


def _table(results: dict[str, Any]) -> str:
    lines = [f"{'model':<11} {'target':<24} {'conc':>4} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}"]
    for model, targets in results.items():
        for target, points in targets.items():
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
        axes[row][0].set(title=f"{model}: throughput", xlabel="concurrent clients", ylabel="requests/s", xscale="log")
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
@click.option("--requests", default=400, show_default=True, help="Requests per point.")
@click.option("--ray/--no-ray", default=True, show_default=True,
              help="Also measure Ray Serve (installed into a throwaway venv the first time).")
@click.option("--ray-venv", type=click.Path(file_okay=False, path_type=Path), default=Path(".cache/bench-serve-ray"),
              show_default=True, help="Where the throwaway Ray Serve venv lives (made on first use).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("docs/benchmarks/serve"), show_default=True, help="Where serve.json and serve.png go.")
def command(models: str, concurrency: str, requests: int, ray: bool, ray_venv: Path, out_dir: Path) -> None:
    """Throughput and latency of /v2 through the facade, to a worker, onnxruntime alone and Ray Serve."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    levels = [int(c) for c in concurrency.split(",")]
    load_before = os.getloadavg()
    results = run_benchmark([m.strip() for m in models.split(",")], levels, requests, ray, ray_venv.resolve())
    report = {
        "command": "legacygpu bench serve " + " ".join(sys.argv[3:]),
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(), "load_before": load_before,
                 "load_after": os.getloadavg(), "python": platform.python_version()},
        "requests_per_point": requests, "batching": {"max_batch_size": _MAX_BATCH, **_BATCHING},
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.json").write_text(json.dumps(report, indent=2))
    load = ", ".join(f"{v:.1f}" for v in load_before)
    _plot(out_dir / "serve.png", results, f"legacygpu bench serve, {os.cpu_count()} cores, load before {load}")
    click.echo(_table(results))
    click.echo(f"load average before {load}, after {', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
               f"wrote {out_dir / 'serve.json'} and {out_dir / 'serve.png'}")
