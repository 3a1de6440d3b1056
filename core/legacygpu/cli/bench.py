"""``legacygpu bench``: benchmarks that print a table and save JSON + PNG.

Subcommands are listed in :data:`SUBCOMMANDS` as ``name -> (module, attribute)``
and imported only when used; adding a benchmark is one line there.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import click

from legacygpu.cli.output import output_option

__all__ = ["SUBCOMMANDS", "command", "gemm"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "gemm": ("legacygpu.cli.bench", "gemm"),
    "local": ("legacygpu.cli.bench_local", "command"),
    "model": ("legacygpu.worker.opencl.bench_model", "model_bench"),
}


class _LazyBenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None:
            return None
        return getattr(importlib.import_module(entry[0]), entry[1])  # type: ignore[no-any-return]


@click.group("bench", cls=_LazyBenchGroup)
def command() -> None:
    """Benchmarks (each prints a table and saves JSON + a PNG)."""


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc


def _shape_list(value: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in value.split(","):
        if not item.strip():
            continue
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise click.BadParameter(f"expected MxNxK, got {item!r}", param_hint="--shapes")
        shapes.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return shapes


@click.command("gemm")
@click.option(
    "--sizes",
    default="256,512,1024,2048",
    show_default=True,
    help="Square sizes (comma-separated); 4096 is opt-in. Empty for none.",
)
@click.option(
    "--inference/--no-inference",
    default=True,
    show_default=True,
    help="Also run the inference shapes M=1,8,32 with N=K=1024 and 4096.",
)
@click.option("--shapes", default="", help="Extra MxNxK shapes, comma-separated (e.g. 16x3072x768).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per shape (best is kept).")
@click.option("--device", "device_index", type=int, default=None, help="Device index (see `legacygpu devices`).")
@click.option("--no-numpy", is_flag=True, help="Skip the numpy reference.")
@click.option("--no-clblast", is_flag=True, help="Skip the CLBlast reference.")
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"), show_default=True,
    help="Where the JSON results and the PNG chart are written.",
)
@output_option
def gemm(sizes: str, inference: bool, shapes: str, repeats: int, device_index: int | None, no_numpy: bool,
    no_clblast: bool,
         out_dir: Path, output: str) -> None:  # fmt: skip
    """SGEMM: ours vs CLBlast vs numpy on the same device, in GFLOPS and ratios."""
    from legacygpu.worker.opencl.bench_gemm import bench_shapes, default_shapes, save_results
    from legacygpu.worker.opencl.device import OpenCLError, open_device

    todo = default_shapes(_int_list(sizes), inference) + _shape_list(shapes)
    if not todo:
        raise click.UsageError("nothing to run: give --sizes, --shapes or --inference")
    try:
        dctx = open_device(device_index)
    except OpenCLError as exc:
        raise click.ClickException(str(exc)) from exc

    def progress(i: int, total: int, shape: tuple[int, int, int]) -> None:
        if output != "json":
            click.echo(f"[{i + 1}/{total}] {shape[0]}x{shape[1]}x{shape[2]}", err=True)

    started = time.time()
    load_before = os.getloadavg()
    rows = bench_shapes(
        dctx, todo, repeats=repeats, with_numpy=not no_numpy, with_clblast=not no_clblast, progress=progress
    )
    meta: dict[str, Any] = {
        "device": dctx.info.name, "platform": dctx.info.platform, "driver": dctx.info.driver_version,
        "device_type": dctx.info.device_type, "compute_units": dctx.info.compute_units,
        "timing": "best of the timed runs; ours and CLBlast take turns; queue finished after each call",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "options": {"sizes": sizes, "inference": inference, "shapes": shapes, "repeats": repeats},
    }  # fmt: skip
    paths = save_results(rows, out_dir, meta)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows))
    click.echo(f"device: {dctx.info.name} ({dctx.info.platform}); saved {', '.join(str(p) for p in paths)}")


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    width = int(spec.split(".")[0] or 0) + len(suffix)
    return ("-" if value is None else format(value, spec) + suffix).rjust(width)


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'M':>5} {'N':>5} {'K':>5} {'ours':>9} {'CLBlast':>9} {'numpy':>9} {'vs CLBlast':>10} {'vs numpy':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['m']:>5} {r['n']:>5} {r['k']:>5} {_fmt(r['ours_gflops'], '9.2f')} "
            f"{_fmt(r['clblast_gflops'], '9.2f')} {_fmt(r['numpy_gflops'], '9.2f')} "
            f"{_fmt(r['ours_vs_clblast'], '9.2f', 'x')} {_fmt(r['ours_vs_numpy'], '8.2f', 'x')}"
        )
    lines.append("GFLOPS, best of the timed runs; ratios are ours / reference.")
    return "\n".join(lines)
