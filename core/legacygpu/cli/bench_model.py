"""``legacygpu bench model``: the command line of ``legacygpu.worker.opencl.bench_model``.

Imported only when ``legacygpu bench model`` runs (see ``bench.SUBCOMMANDS``). Parses the
options, runs the benchmark with the OpenCL fallback warnings quieted (each row reports its
OpenCL FLOP share instead), records the run's load average in the JSON's ``meta``, and prints a
table in which a ratio within noise is marked ``~``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from legacygpu.cli.output import output_option, table
from legacygpu.worker.opencl.bench_model import DEFAULT_MODELS, MODELS

__all__ = ["model_bench"]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ratio(r: dict[str, Any]) -> str:
    if not r["ratio_vs_onnxruntime"]:
        return "-"
    note = " ~" if r["within_noise"] else ""
    return f"{r['ratio_vs_onnxruntime']:.3f}x ({r['ratio_q1']:.3g}-{r['ratio_q3']:.3g}){note}"


def _table(rows: list[dict[str, Any]]) -> str:
    return table(rows, [
        ("MODEL", lambda r: r["model"]), ("BATCH", lambda r: r["batch"]), ("BACKEND", lambda r: r["backend"]),
        ("LATENCY ms", lambda r: _fmt(r["latency_ms"], ".2f")),
        ("MIN-MAX ms", lambda r: f"{r['latency_ms_min']:.2f}-{r['latency_ms_max']:.2f}" if r["runs"] else "-"),
        ("RUNS", lambda r: r["runs"]),
        ("THROUGHPUT /s", lambda r: _fmt(r["throughput_per_s"], ".2f")),
        ("VS ORT (IQR)", _ratio),
        ("OPENCL FLOPS", lambda r: _fmt(100 * r["opencl_flop_share"], ".1f") + "%"
         if r["opencl_flop_share"] is not None else ""),
        ("NOTE", lambda r: (r["error"] or "")[:60] or None),
    ])  # fmt: skip


@click.command("model")
@click.option(
    "--models",
    default=",".join(DEFAULT_MODELS),
    help=f"Comma-separated names ({', '.join(MODELS)}) or .onnx paths. Default: all of those names, which takes "
    "several minutes on a CPU (PoCL); pick a few for a quick run, e.g. --models digits,squeezenet.",
)
@click.option("--batches", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Minimum interleaved rounds per model and batch (short rows get more, up to --budget seconds).",
)
@click.option(
    "--budget", type=click.FloatRange(min=0), default=5.0, show_default=True,
    help="Seconds per model and batch beyond which no extra rounds are added.",
)  # fmt: skip
@click.option("--device", "device_index", type=int, default=None, help="OpenCL device index (see `legacygpu devices`).")
@click.option(
    "--platform", default=None,
    help="Run on the first device of the OpenCL platform whose name contains this (e.g. rusticl, Portable).",
)  # fmt: skip
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"), show_default=True,
    help="Where bench-model.json and bench-model.png are written.",
)  # fmt: skip
@output_option
def model_bench(
    models: str, batches: str, repeats: int, budget: float, device_index: int | None, platform: str | None,
    out_dir: Path, output: str,
) -> None:
    """Latency and throughput per model: the OpenCL backend against onnxruntime on the CPU, interleaved."""
    from legacygpu.cli.bench import device_index_for
    from legacygpu.core.errors import NotFoundError
    from legacygpu.core.logs import quieted
    from legacygpu.worker.opencl.bench_model import bench_models, save_results
    from legacygpu.worker.opencl.bench_timing import load_average

    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {batches!r}", param_hint="--batches") from exc
    if not names or not sizes or min(sizes) < 1:
        raise click.BadParameter("give at least one model and batch sizes of 1 or more")

    device_index = device_index_for(device_index, platform)

    def progress(name: str, batch: int) -> None:
        if output != "json":
            click.echo(f"  {name} batch {batch} ...", err=True)

    started, load_before = time.time(), load_average()
    try:
        with quieted("legacygpu.worker.opencl"):
            rows = bench_models(names, sizes, repeats, device_index, progress, budget_s=budget)
    except NotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--models") from exc
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "load_average_before": load_before, "load_average_after": load_average(), "cpu_count": os.cpu_count(),
        "timing": "median of interleaved rounds (order rotates each round); ratio: median of per-round "
                  "OpenCL/onnxruntime throughput ratios with quartiles; within_noise when the quartiles straddle 1",
        "options": {"models": names, "batches": sizes, "repeats": repeats, "budget_s": budget, "platform": platform},
    }  # fmt: skip
    json_path, png_path = save_results({"meta": meta, "rows": rows}, out_dir)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows))
    click.echo(f"load average {load_before[0]} -> {meta['load_average_after'][0]}; '~': ratio within noise "  # type: ignore[index]
               f"(its interquartile range includes 1); saved {json_path} and {png_path}")  # fmt: skip
