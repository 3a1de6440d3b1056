"""``legacygpu bench local`` (``make bench-local``): the embedded local cluster against onnxruntime alone.

One run does, in order:

1. **Inputs.** The held-out quarter of scikit-learn's digits (450 scans),
   drawn as PNGs of dark ink on white paper exactly as the demo model is
   tested, cycled to ``--tasks`` request bodies (base64 image tensors).
2. **Reference, in this process.** An ``onnxruntime.InferenceSession`` on the
   same ONNX file with the worker's session options, fed the same request
   tensors through the same card-driven pre- and post-processing
   (``legacygpu.worker.processing``). Each call is timed alone: this is what a
   task costs without a cluster. It runs before the cluster starts, so the
   two measurements do not compete for the CPU.
3. **Cluster.** A facade and ``--workers`` worker processes (the same
   supervisor ``legacygpu cluster start`` uses) on a free loopback port with
   a temporary data dir. First a warm-up, not measured: up to
   :data:`WARMUP_TASKS` tasks one per request, so that the first measured
   run, like the second, finds the model loaded on every worker, the
   coordinator's model times known and the database in use. Then
   ``--concurrency`` clients submit every task as fast as the facade accepts
   them, twice: one task per request (``POST /cluster/tasks/submit``), then
   ``--batch-size`` per request (``POST /cluster/tasks/submit-many``); each
   run waits until every task has finished.
4. **Report.** Throughput is succeeded tasks over the span from the first
   task's creation to the last one's completion (facade clock); latency is
   each task's ``latency_ms`` (submission to completion, so queueing under
   load counts). Overhead per task is given two ways: cluster p50 latency
   minus direct p50, and cluster time per task (1/throughput) minus direct
   time per task. ``cluster`` and ``overhead`` are the last (submit-many)
   run's, ``one_per_request`` the first run's, each labelled with its mode.
   Every cluster result's top-1 label is compared with the direct one. A
   table is printed; JSON and a PNG go to ``--out-dir``.

The host's core count and load average are recorded, since on a shared
machine other work moves the numbers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import platform
import secrets
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np

__all__ = ["command", "direct_reference", "make_inputs", "percentile", "summarize"]

log = logging.getLogger(__name__)

MODEL = "digits"
TASK_TIMEOUT_SECONDS = 3600
PROBE_POLL_SECONDS = 0.01
"""How often the one-at-a-time probe asks whether its task is done; the paced direct calls wait as long."""
TERMINAL = ("Succeeded", "Failed", "Cancelled")
WARMUP_TASKS = 100
"""Tasks run, not measured, before the first measured run (fewer when ``--tasks`` is smaller)."""


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), or None for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def make_inputs(count: int) -> tuple[list[list[dict[str, Any]]], list[int]]:
    """``count`` request input lists (PNG image tensors) and the true digit of each."""
    from legacygpu.worker.demo import digit_png, load_split

    _, x_test, _, y_test = load_split()
    pngs = [base64.b64encode(digit_png(x)).decode() for x in x_test]
    bodies = [[{"name": "input", "shape": [1], "datatype": "BYTES", "data": [pngs[i % len(pngs)]]}]
              for i in range(count)]
    return bodies, [int(y_test[i % len(pngs)]) for i in range(count)]


def direct_reference(models_dir: Path, inputs: list[list[dict[str, Any]]], warmup: int = 20,
                     paced: int = 0) -> dict[str, Any]:
    """Per-task times of validation + pre-processing + onnxruntime + post-processing in this process, and the labels.

    The model runs through the worker's own onnxruntime backend, so both sides load it the same way. The
    calls run back to back (a hot cache: the reference for throughput and for every latency but one);
    then ``paced`` more, each after :data:`PROBE_POLL_SECONDS` idle, the cadence of the one-at-a-time
    probe's tasks (:func:`_probe`): a model that waited idle runs slower than one called back to back,
    and a lone task always comes after such a wait.
    """
    import onnxruntime

    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.core.tensors import validate_inputs
    from legacygpu.worker.backends import create_backend
    from legacygpu.worker.processing import postprocess, preprocess

    repository = ModelRepository(models_dir)
    card = repository.get(MODEL)
    loaded = create_backend("onnxruntime").load(repository.model_path(MODEL))  # the worker's own backend

    def once(tensors: list[dict[str, Any]]) -> tuple[str, float, float]:
        started = time.perf_counter()
        feeds = preprocess(card, validate_inputs(card, tensors))  # what the worker's runner does
        model_started = time.perf_counter()
        outputs = loaded.run(feeds)
        model_ms = (time.perf_counter() - model_started) * 1000
        label = postprocess(card, outputs)["top_k"][0]["label"]
        return label, (time.perf_counter() - started) * 1000, model_ms

    for tensors in inputs[:warmup]:
        once(tensors)
    total_ms: list[float] = []
    model_ms: list[float] = []
    labels: list[str] = []
    started = time.perf_counter()
    for tensors in inputs:
        label, total, model = once(tensors)
        total_ms.append(total)
        model_ms.append(model)
        labels.append(label)
    wall = time.perf_counter() - started
    paced_ms: list[float] = []
    for tensors in inputs[:paced]:
        time.sleep(PROBE_POLL_SECONDS)
        paced_ms.append(once(tensors)[1])
    return {
        "per_task_ms": total_ms,
        "paced_per_task_ms": paced_ms,
        "model_ms": model_ms,
        "labels": labels,
        "wall_seconds": wall,
        "throughput_per_second": len(inputs) / wall,
        "onnxruntime": onnxruntime.__version__,
    }


async def _submit_all(url: str, token: str, inputs: list[list[dict[str, Any]]], concurrency: int,
                      batch: int = 1) -> list[str]:
    """Submit every input as a task from ``concurrency`` clients: one per request (``batch`` 1, ``POST
    /cluster/tasks/submit``) or ``batch`` per request (``POST /cluster/tasks/submit-many``); the ids, in order.

    The clients share one aiohttp session (the facade's own client library): on a machine of few cores the
    submitting clients compete with the cluster for the CPU, and aiohttp costs a fraction of httpx per request.
    """
    import aiohttp

    ids: list[str] = [""] * len(inputs)
    next_start = iter(range(0, len(inputs), batch))
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def submitter() -> None:
            for start in next_start:
                bodies = [{"model": MODEL, "inputs": tensors, "timeout_seconds": TASK_TIMEOUT_SECONDS}
                          for tensors in inputs[start:start + batch]]
                if batch == 1:
                    async with client.post("/cluster/tasks/submit", json=bodies[0]) as response:
                        response.raise_for_status()
                        ids[start] = (await response.json())["id"]
                    continue
                async with client.post("/cluster/tasks/submit-many", json={"tasks": bodies}) as response:
                    response.raise_for_status()
                    for offset, task in enumerate((await response.json())["data"]):
                        ids[start + offset] = task["id"]

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return ids


def _count(client: httpx.Client, phases: Sequence[str]) -> int:
    """How many tasks are in ``phases`` (an indexed count; no task is read)."""
    page = client.get("/cluster/tasks", params={"phase": list(phases), "limit": 1}).raise_for_status().json()
    return int(page["count"])


def _wait_finished(client: httpx.Client, total: int, timeout: float) -> None:
    """Until ``total`` tasks have finished, asking every 0.25 s.

    It asks for a count of finished tasks, not for ``/cluster/metrics``: the summary reads every task
    finished in the last five minutes to give their latency percentiles, work for the facade on the
    cores it shares with the cluster measured.
    """
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        done = _count(client, TERMINAL)
        if done >= total:
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"only {done}/{total} tasks finished within {timeout:.0f}s")
        if time.monotonic() - last_report > 5:
            log.info("%d/%d tasks finished, %d queued", done, total, _count(client, ["Queued"]))
            last_report = time.monotonic()
        time.sleep(0.25)


def _all_tasks(client: httpx.Client) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    while True:
        page = client.get("/cluster/tasks", params={"limit": 1000, "offset": len(tasks)}).json()
        tasks += page["data"]
        if not page["data"] or len(tasks) >= page["count"]:
            return tasks


async def _labels(url: str, token: str, ids: list[str], concurrency: int) -> list[str | None]:
    labels: list[str | None] = [None] * len(ids)
    next_index = iter(range(len(ids)))
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:

        async def reader() -> None:
            for i in next_index:
                result = (await client.get(f"/cluster/tasks/{ids[i]}")).json().get("result") or {}
                labels[i] = (result.get("top_k") or [{}])[0].get("label")

        await asyncio.gather(*(reader() for _ in range(concurrency)))
    return labels


def _probe(client: httpx.Client, inputs: list[list[dict[str, Any]]], count: int) -> list[dict[str, Any]]:
    """``count`` tasks one at a time on the idle cluster: the per-task cost without queueing."""
    tasks = []
    for i in range(count):
        body = {"model": MODEL, "inputs": inputs[i % len(inputs)], "timeout_seconds": TASK_TIMEOUT_SECONDS}
        task = client.post("/cluster/tasks/submit", json=body).raise_for_status().json()
        while task["phase"] not in TERMINAL:
            time.sleep(PROBE_POLL_SECONDS)
            task = client.get(f"/cluster/tasks/{task['id']}/status").raise_for_status().json()
        tasks.append(task)
    return tasks


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def _stages(tasks: list[dict[str, Any]]) -> dict[str, float | None]:
    """Where a lone task's time goes, p50 of each stage from the facade's own timestamps, in ms."""
    def p50(a: str, b: str) -> float | None:
        spans = [(_ts(t[b]) - _ts(t[a])) * 1000 for t in tasks if t.get(a) and t.get(b)]
        return percentile(spans, 50)

    return {"submitted_to_placed": p50("created_at", "scheduled_at"),
            "placed_to_pushed": p50("scheduled_at", "started_at"),
            "pushed_to_done": p50("started_at", "finished_at"),
            "model": percentile([t["compute_ms"] for t in tasks if t.get("compute_ms") is not None], 50)}


def summarize(tasks: list[dict[str, Any]], direct: dict[str, Any], probe: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput, latency percentiles and overhead from the cluster's tasks and the direct reference."""
    done = [t for t in tasks if t["phase"] == "Succeeded"]
    latency = [t["latency_ms"] for t in done if t.get("latency_ms") is not None]
    compute = [t["compute_ms"] for t in done if t.get("compute_ms") is not None]
    span = max(_ts(t["finished_at"]) for t in done) - min(_ts(t["created_at"]) for t in tasks) if done else 0.0
    throughput = len(done) / span if span > 0 else 0.0
    direct_ms = direct["per_task_ms"]
    direct_mean, direct_p50 = statistics.fmean(direct_ms), percentile(direct_ms, 50)
    paced_p50 = percentile(direct.get("paced_per_task_ms", []), 50)
    cluster = {
        "succeeded": len(done),
        "failed": sum(t["phase"] == "Failed" for t in tasks),
        "retried": sum(t.get("attempts", 1) > 1 for t in tasks),
        "span_seconds": span,
        "throughput_per_second": throughput,
        "latency_ms": {
            **{f"p{q}": percentile(latency, q) for q in (50, 90, 99)},
            "mean": statistics.fmean(latency) if latency else None,
        },
        "compute_ms": {f"p{q}": percentile(compute, q) for q in (50, 99)},
    }
    unloaded = [t["latency_ms"] for t in probe if t["phase"] == "Succeeded" and t.get("latency_ms") is not None]
    cluster["unloaded_latency_ms"] = {f"p{q}": percentile(unloaded, q) for q in (50, 90, 99)} | {"n": len(unloaded)}
    cluster["unloaded_stages_ms"] = _stages([t for t in probe if t["phase"] == "Succeeded"])
    reference = {
        "per_task_ms": {"mean": direct_mean, "p50": direct_p50, "p99": percentile(direct_ms, 99)},
        "model_only_ms": {"p50": percentile(direct["model_ms"], 50)},
        "paced_per_task_ms": {"p50": paced_p50, "n": len(direct.get("paced_per_task_ms", [])),
                              "idle_seconds": PROBE_POLL_SECONDS},
        "throughput_per_second": direct["throughput_per_second"],
    }
    p50 = cluster["latency_ms"]["p50"]
    idle_p50 = cluster["unloaded_latency_ms"]["p50"]
    overhead = {
        "unloaded_latency_p50_minus_direct_p50_ms": None if idle_p50 is None else idle_p50 - (direct_p50 or 0.0),
        "unloaded_latency_p50_minus_paced_direct_p50_ms":
            None if idle_p50 is None or paced_p50 is None else idle_p50 - paced_p50,
        "loaded_latency_p50_minus_direct_p50_ms": None if p50 is None else p50 - (direct_p50 or 0.0),
        "time_per_task_ms": None if not throughput else 1000 / throughput - direct_mean,
        "throughput_ratio_direct_over_cluster": direct["throughput_per_second"] / throughput if throughput else None,
        "unloaded_latency_ratio_cluster_over_direct": idle_p50 / direct_p50 if idle_p50 and direct_p50 else None,
    }
    return {"cluster": cluster, "direct": reference, "overhead": overhead}


def _agreement(labels: list[str | None], direct: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(labels, direct, strict=True)]))


def _one_per_request(run: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """The one-task-per-request run's figures, beside the headline (submit-many) run's."""
    figures = summarize(run["tasks"], direct, [])
    cluster = {k: v for k, v in figures["cluster"].items() if not k.startswith("unloaded_")}
    overhead = {k: figures["overhead"][k] for k in ("throughput_ratio_direct_over_cluster", "time_per_task_ms",
                                                    "loaded_latency_p50_minus_direct_p50_ms")}
    return {"submit_mode": mode_name(1), "cluster": cluster, "overhead": overhead,
            "agreement": _agreement(run["labels"], direct["labels"]), "submit_seconds": run["submit_seconds"],
            "client_seconds": run["client_seconds"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare_models(data_dir: Path, models_from: Path | None) -> Path:
    """The demo model in ``data_dir``: copied from an existing repository when there is one, else trained."""
    from legacygpu.core.config import Settings
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import ensure_demo_model

    target = data_dir / "models"
    source = models_from or Settings().models_dir
    if (source / MODEL).is_dir():
        shutil.copytree(source, target)
        log.info("using the demo model from %s", source)
    else:
        log.info("training the demo model (no trained copy in %s)", source)
        ensure_demo_model(ModelRepository(target))
    return target


def mode_name(batch: int) -> str:
    """How a run's tasks were submitted, as the report labels its figures."""
    return "one task per request" if batch == 1 else f"submit-many, {batch} tasks per request"


def run_cluster(data_dir: Path, workers: int, inputs: list[list[dict[str, Any]]], concurrency: int,
                timeout: float, probe: int, batches: list[int]) -> dict[str, Any]:
    """Start a facade and ``workers`` workers; for each of ``batches`` (tasks per submit request), push every
    input through as a task and collect the tasks; one run per batch size, one after the other.

    Before them, a warm-up of up to :data:`WARMUP_TASKS` tasks (not measured); after them, on the idle
    cluster, ``probe`` more tasks one at a time (not counted in the throughput).
    """
    from legacygpu.cli.supervisor import Supervisor

    token = secrets.token_urlsafe(24)
    supervisor = Supervisor(data_dir=data_dir, host="127.0.0.1", port=_free_port(), devices=[None] * workers,
                            token=token, backend="onnxruntime")
    try:
        supervisor.start()
        ready = supervisor.wait_for_workers()
        if ready < workers:
            raise click.ClickException(f"only {ready}/{workers} workers registered; see {data_dir / 'logs'}")
        runs = []
        with httpx.Client(base_url=supervisor.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            warmup = inputs[:WARMUP_TASKS]
            log.info("warm-up: %d tasks one per request, not measured", len(warmup))
            asyncio.run(_submit_all(supervisor.url, token, warmup, concurrency, 1))
            _wait_finished(client, len(warmup), timeout)
            for n, batch in enumerate(batches, start=1):
                log.info("cluster up at %s with %d workers; submitting %d tasks from %d clients, %s", supervisor.url,
                         workers, len(inputs), concurrency, mode_name(batch))
                started = time.perf_counter()
                ids = asyncio.run(_submit_all(supervisor.url, token, inputs, concurrency, batch))
                submit_seconds = time.perf_counter() - started
                _wait_finished(client, len(warmup) + n * len(inputs), timeout)
                client_seconds = time.perf_counter() - started
                labels = asyncio.run(_labels(supervisor.url, token, ids, concurrency))
                runs.append({"batch": batch, "ids": ids, "labels": labels, "submit_seconds": submit_seconds,
                             "client_seconds": client_seconds})
            every = {t["id"]: t for t in _all_tasks(client)}
            for run in runs:
                run["tasks"] = [every[i] for i in run["ids"]]
            log.info("all finished; %d more tasks one at a time on the idle cluster", probe)
            probed = _probe(client, inputs, probe)
        return {"runs": runs, "probe": probed, "warmup": len(warmup)}
    finally:
        supervisor.shutdown()


def _plot(path: Path, run: dict[str, Any], direct: dict[str, Any], report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = run["tasks"]
    done = [t for t in tasks if t["phase"] == "Succeeded"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    one_at_a_time = [t["latency_ms"] for t in run["probe"] if t.get("latency_ms")]
    for values, name in [(direct["per_task_ms"], "direct onnxruntime (one process)"),
                         (one_at_a_time, "cluster, one task at a time"),
                         ([t["latency_ms"] for t in done], "cluster under load (all tasks queued)")]:
        if not values:
            continue
        ordered = np.sort(values)
        ax1.plot(ordered, np.linspace(0, 1, len(ordered)), label=name)
    ax1.set_xscale("log")
    ax1.set_xlabel("ms per task (log scale)")
    ax1.set_ylabel("fraction of tasks")
    ax1.set_title("Latency distribution")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)

    workers = report["config"]["workers"]
    names = ["direct\nonnxruntime", f"cluster, {workers} worker(s)\n{report['cluster']['submit_mode']}"]
    rates = [report["direct"]["throughput_per_second"], report["cluster"]["throughput_per_second"]]
    if single := report.get("one_per_request"):
        names.append(f"cluster, {workers} worker(s)\n{single['submit_mode']}")
        rates.append(single["cluster"]["throughput_per_second"])
    bars = ax2.bar(names, rates, color=["#4c72b0", "#dd8452", "#55a868"][:len(rates)])
    ax2.tick_params(axis="x", labelsize=7)
    ax2.bar_label(bars, fmt="%.0f")
    ax2.set_ylabel("tasks per second")
    ax2.set_title("Throughput")

    start = min(_ts(t["created_at"]) for t in tasks)
    finished = np.sort([_ts(t["finished_at"]) - start for t in done])
    created = np.sort([_ts(t["created_at"]) - start for t in tasks])
    ax3.plot(created, np.arange(1, len(created) + 1), label="submitted")
    ax3.plot(finished, np.arange(1, len(finished) + 1), label="finished")
    ax3.set_xlabel("seconds since the first submission")
    ax3.set_ylabel("tasks")
    ax3.set_title("Progress")
    ax3.legend(fontsize=8)
    ax3.grid(alpha=0.3)
    cfg = report["config"]
    fig.suptitle(f"legacygpu local cluster: {cfg['tasks']} digits tasks, {cfg['workers']} worker(s), "
                 f"{cfg['concurrency']} submitting clients, {report['host']['cpu_count']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _table(report: dict[str, Any]) -> str:
    c, d, o, cfg, host = report["cluster"], report["direct"], report["overhead"], report["config"], report["host"]
    mode = c.get("submit_mode", "one task per request")
    single = report.get("one_per_request")
    warmup = f"warm-up ({cfg['warmup_tasks']} tasks, not measured), then " if cfg.get("warmup_tasks") else ""
    runs = [(mode, c, report["agreement"]), *([(single["submit_mode"], single["cluster"], single["agreement"])]
                                              if single else [])]
    rows = [
        ("throughput runs, in order", warmup + (f"{single['submit_mode']}, then " if single else "") + mode),
        *((f"tasks (succeeded / failed / retried) ({m})", f"{r['succeeded']} / {r['failed']} / {r['retried']}")
          for m, r, _ in runs),
        *((f"cluster throughput ({m})", _fmt(r["throughput_per_second"], " tasks/s", 1)) for m, r, _ in runs),
        (f"latency under load p50 / p90 / p99 ({mode})",
         " / ".join(_fmt(c["latency_ms"][k], " ms") for k in ("p50", "p90", "p99"))),
        (f"latency one at a time p50 / p99 (n={c['unloaded_latency_ms']['n']})",
         " / ".join(_fmt(c["unloaded_latency_ms"][k], " ms") for k in ("p50", "p99"))),
        ("worker compute p50 (model only)", _fmt(c["compute_ms"]["p50"], " ms", 3)),
        ("direct per task p50 / p99 (pre+model+post)",
         " / ".join(_fmt(d["per_task_ms"][k], " ms", 3) for k in ("p50", "p99"))),
        ("direct throughput (one process)", _fmt(d["throughput_per_second"], " tasks/s", 1)),
        ("overhead: one-at-a-time p50 - direct p50", _fmt(o["unloaded_latency_p50_minus_direct_p50_ms"], " ms")),
        ("direct per task p50, each call after the probe's idle wait",
         _fmt(d["paced_per_task_ms"]["p50"], " ms", 3)),
        ("overhead: one-at-a-time p50 - that paced direct p50",
         _fmt(o["unloaded_latency_p50_minus_paced_direct_p50_ms"], " ms")),
        (f"overhead: 1/throughput - direct mean ({mode})", _fmt(o["time_per_task_ms"], " ms per task")),
        (f"ratio: direct / cluster throughput ({mode})", _fmt(o["throughput_ratio_direct_over_cluster"], "x", 1)),
        *([(f"ratio: direct / cluster throughput ({single['submit_mode']})",
            _fmt(single["overhead"]["throughput_ratio_direct_over_cluster"], "x", 1))] if single else []),
        *((f"top-1 agreement cluster vs direct ({m})", _fmt(agreement * 100, " %", 2)) for m, _, agreement in runs),
        (f"top-1 accuracy (held-out digits) ({mode})", _fmt(report["accuracy"] * 100, " %", 2)),
        (f"submit phase / client wall time ({mode})",
         f"{report['submit_seconds']:.1f} s / {report['client_seconds']:.1f} s"),
        ("host", f"{host['cpu_count']} CPU cores, load average {host['load_before'][0]:.2f} before, "
                 f"{host['load_after'][0]:.2f} after"),
    ]
    width = max(len(k) for k, _ in rows)
    head = f"bench-local: {cfg['tasks']} tasks, {cfg['workers']} worker(s), {cfg['concurrency']} clients"
    return "\n".join([head, "-" * len(head), *(f"{k.ljust(width)}  {v}" for k, v in rows)])


@click.command("local")
@click.option("--tasks", type=click.IntRange(min=1), default=2000, show_default=True, envvar="BENCH_TASKS",
              help="Tasks to submit [env BENCH_TASKS].")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, envvar="BENCH_WORKERS",
              help="Worker processes [env BENCH_WORKERS].")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, envvar="BENCH_CONCURRENCY",
              help="Clients submitting at once [env BENCH_CONCURRENCY].")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="Where the JSON and PNG go.")
@click.option("--models-from", type=click.Path(file_okay=False, path_type=Path),
              help="A model repository holding the demo model (default: the data dir's; trained when absent).")
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
              help="Seconds to wait for every task to finish.")
@click.option("--probe", type=click.IntRange(min=0), default=50, show_default=True,
              help="Extra tasks sent one at a time after the load, for latency without queueing.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=100, show_default=True, envvar="BENCH_BATCH_SIZE",
              help="Tasks per POST /cluster/tasks/submit-many in the second run; 1 makes only the one-task-per-request "
                   "run [env BENCH_BATCH_SIZE].")
@click.option("--keep-data", is_flag=True, help="Keep the temporary data dir (database, logs).")
def command(tasks: int, workers: int, concurrency: int, out_dir: Path, models_from: Path | None, timeout: float,
            probe: int, batch_size: int, keep_data: bool) -> None:
    """Throughput, latency and per-task overhead of the local cluster against onnxruntime in one process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    data_dir = Path(tempfile.mkdtemp(prefix="legacygpu-bench-"))
    load_before = os.getloadavg()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        models_dir = _prepare_models(data_dir, models_from)
        inputs, truth = make_inputs(tasks)
        log.info("direct onnxruntime reference over %d inputs", tasks)
        direct = direct_reference(models_dir, inputs, paced=probe)
        run = run_cluster(data_dir, workers, inputs, concurrency, timeout, probe, sorted({1, batch_size}))
    finally:
        if keep_data:
            log.info("data dir kept at %s", data_dir)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    headline, single = run["runs"][-1], run["runs"][0]
    report = summarize(headline["tasks"], direct, run["probe"])
    report["cluster"]["submit_mode"] = report["overhead"]["throughput_mode"] = mode_name(headline["batch"])
    report["cluster"]["unloaded_submit_mode"] = mode_name(1)
    report["agreement"] = _agreement(headline["labels"], direct["labels"])
    report["accuracy"] = float(np.mean([a == str(t) for a, t in zip(headline["labels"], truth, strict=True)]))
    report["submit_seconds"], report["client_seconds"] = headline["submit_seconds"], headline["client_seconds"]
    if single is not headline:
        report["one_per_request"] = _one_per_request(single, direct)
    report["config"] = {"tasks": tasks, "workers": workers, "concurrency": concurrency, "probe": probe, "model": MODEL,
                        "batch_size": headline["batch"], "warmup_tasks": run["warmup"]}
    report["host"] = {
        "cpu_count": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg(),
        "platform": platform.platform(), "python": platform.python_version(), "onnxruntime": direct["onnxruntime"],
    }
    report["started"], report["finished"] = started_at, datetime.now(UTC).isoformat(timespec="seconds")
    report["raw"] = {
        "cluster_latency_ms": [round(t["latency_ms"], 3) for t in headline["tasks"]
                               if t.get("latency_ms") is not None],
        "unloaded_latency_ms": [round(t["latency_ms"], 3) for t in run["probe"] if t.get("latency_ms") is not None],
        "direct_per_task_ms": [round(v, 4) for v in direct["per_task_ms"]],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "bench-local"  # one name, as the other benchmarks: a rerun replaces the committed run
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    _plot(stem.with_suffix(".png"), {"tasks": headline["tasks"], "probe": run["probe"]}, direct, report)
    click.echo(_table(report))
    click.echo(f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    if (os.cpu_count() or 1) <= 4:
        click.echo(f"note: {os.cpu_count()} CPU cores shared by the facade, {workers} worker(s), the submitting "
                   "clients and anything else running here; the numbers move with the machine's load.")
