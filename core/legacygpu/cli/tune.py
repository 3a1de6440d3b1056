"""``legacygpu tune``: autotune the GEMM kernels for one OpenCL device.

Runs :class:`~legacygpu.worker.opencl.tuning.Autotuner` over the shape
classes (gemv: M<=4, skinny: M<=16, medium: M<=32, square), with a progress bar, and saves
the winners in the tuning cache, where every later ``Gemm`` on this device
and driver finds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from legacygpu.cli.output import output_option

__all__ = ["command"]


@click.command("tune")
@click.option("--quick", is_flag=True, help="Fewer candidates and smaller problems (about a minute on PoCL).")
@click.option(
    "--device",
    "device_index",
    type=int,
    default=None,
    help="Device index from `legacygpu devices` (default: the first GPU, else any).",
)
@click.option(
    "--classes", default="gemv,skinny,medium,square", show_default=True, help="Comma-separated shape classes to tune."
)
@click.option("--count", type=int, default=None, help="Candidates sampled per class before refinement.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Tuning cache directory (default: $LEGACYGPU_CACHE_DIR/tuning or ~/.cache/legacygpu/tuning).",
)
@output_option
def command(quick: bool, device_index: int | None, classes: str, count: int | None, cache_dir: Path | None,
            output: str) -> None:  # fmt: skip
    """Search GEMM kernel parameters for this device and cache the fastest verified ones."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from legacygpu.worker.opencl.device import OpenCLError, open_device
    from legacygpu.worker.opencl.gemm import SHAPE_CLASSES
    from legacygpu.worker.opencl.tuning import Autotuner, CandidateResult, TuningCache

    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in SHAPE_CLASSES]
    if unknown:
        raise click.BadParameter(
            f"unknown class(es) {unknown}; choose from {list(SHAPE_CLASSES)}", param_hint="--classes"
        )
    console = Console(stderr=True)
    try:
        dctx = open_device(device_index)
        cache = TuningCache(cache_dir)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=console,
                      disable=output == "json") as progress:  # fmt: skip
            tasks: dict[str, TaskID] = {}
            bests: dict[str, float] = {}

            def report(cls: str, done: int, total: int, result: CandidateResult) -> None:
                if cls not in tasks:
                    tasks[cls] = progress.add_task(f"tune {cls}", total=total, last="")
                best = bests[cls] = max(bests.get(cls, 0.0), result.gflops)
                last = f"{result.candidate.describe()}: {result.status}"
                if result.status == "ok":
                    last += f" {result.gflops:.1f} GFLOPS"
                progress.update(tasks[cls], completed=done, total=total, last=f"best {best:.1f} | {last}")

            console.print(f"Tuning SGEMM on [bold]{dctx.info.name}[/] ({dctx.info.platform}, driver "
                          f"{dctx.info.driver_version}){' --quick' if quick else ''}")  # fmt: skip
            tuner = Autotuner(dctx, cache, progress=report)
            winners = tuner.tune(wanted, quick=quick, count=count)
    except OpenCLError as exc:
        raise click.ClickException(str(exc)) from exc
    path = cache.path_for(dctx.info)
    result = {
        "device": dctx.info.name, "platform": dctx.info.platform, "driver": dctx.info.driver_version,
        "cache_file": str(path),
        "winners": {cls: {"params": w.candidate.params.to_dict(), "gflops": round(w.gflops, 2)}
                    for cls, w in winners.items()},
    }  # fmt: skip
    if output == "json":
        click.echo(json.dumps(result, indent=2))
        return
    for cls, w in winners.items():
        click.echo(f"{cls:7s} {w.gflops:8.1f} GFLOPS  {w.candidate.params.short()}")
    click.echo(f"saved to {path}")
