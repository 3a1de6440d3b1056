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

__all__ = ["SUBCOMMANDS", "command", "device_index_for", "gemm"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "docs": ("legacygpu.cli.bench_docs", "command"),
    "gemm": ("legacygpu.cli.bench", "gemm"),
    "local": ("legacygpu.cli.bench_local", "command"),
    "model": ("legacygpu.cli.bench_model", "model_bench"),
    "serve": ("legacygpu.cli.bench_serve", "command"),
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


def device_index_for(device_index: int | None, platform: str | None) -> int | None:
    """``--device`` as given, or the first device whose platform name contains ``--platform``."""
    if platform is None:
        return device_index
    from legacygpu.worker.opencl.device import discover

    found = [d for d in discover() if platform.lower() in d.platform.lower()]
    if not found:
        names = sorted({d.platform for d in discover()})
        raise click.BadParameter(f"no OpenCL platform matches {platform!r} (found: {', '.join(names) or 'none'})",
                                 param_hint="--platform")  # fmt: skip
    if device_index is None:
        return found[0].index
    if device_index not in {d.index for d in found}:
        raise click.BadParameter(f"device {device_index} is not on platform {platform!r}", param_hint="--device")
    return device_index


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
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Minimum interleaved rounds per shape (small shapes get more); figures are medians.",
)
@click.option("--device", "device_index", type=int, default=None, help="Device index (see `legacygpu devices`).")
@click.option(
    "--platform",
    default=None,
    help="Run on the first device of the OpenCL platform whose name contains this (e.g. rusticl, Portable).",
)
@click.option("--no-numpy", is_flag=True, help="Skip the numpy reference.")
@click.option("--no-clblast", is_flag=True, help="Skip the CLBlast reference.")
@click.option(
    "--clblast-sweep/--no-clblast-sweep",
    default=True,
    show_default=True,
    help="Sweep CLBlast's parameters first (minutes on a CPU) and compare against the best set.",
)
@click.option(
    "--clblast-sweep-from",
    "sweep_from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Reuse the CLBlast sweep recorded in an earlier gemm.json (same device) instead of sweeping again.",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Where gemm.json and gemm.png are written.",
)
@output_option
def gemm(sizes: str, inference: bool, shapes: str, repeats: int, device_index: int | None, platform: str | None,
         no_numpy: bool, no_clblast: bool, clblast_sweep: bool, sweep_from: Path | None, out_dir: Path,
         output: str) -> None:  # fmt: skip
    """SGEMM: ours vs CLBlast (best of a parameter sweep) vs numpy, interleaved; medians with min-max."""
    from legacygpu.worker.opencl import bench_clblast
    from legacygpu.worker.opencl.bench_gemm import bench_shapes, default_shapes, save_results
    from legacygpu.worker.opencl.bench_timing import load_average
    from legacygpu.worker.opencl.device import OpenCLError, open_device

    todo = default_shapes(_int_list(sizes), inference) + _shape_list(shapes)
    if not todo:
        raise click.UsageError("nothing to run: give --sizes, --shapes or --inference")
    index = device_index_for(device_index, platform)
    try:
        dctx = open_device(index)
    except OpenCLError as exc:
        raise click.ClickException(str(exc)) from exc
    say = (lambda msg: None) if output == "json" else (lambda msg: click.echo(msg, err=True))

    started = time.time()
    load_before = load_average()
    sweep: dict[str, Any] | None = None
    if sweep_from is not None:
        sweep = _earlier_sweep(sweep_from, dctx.info.name)
        say(f"CLBlast parameters from the sweep in {sweep_from}: {sweep['best']}")
    elif clblast_sweep and not no_clblast and bench_clblast.import_pyclblast() is not None:
        classes = sorted({bench_clblast.clblast_class(m) for m, _, _ in todo})
        say(f"sweeping CLBlast parameters for {', '.join(classes)} (each set is a rebuild: minutes on a CPU)")
        sweep = bench_clblast.sweep(dctx.info.index, classes)
        sweep["seconds"] = round(time.time() - started, 1)
        say(f"CLBlast sweep done in {sweep['seconds']} s; best: {sweep['best']}")

    def progress(i: int, total: int, shape: tuple[int, int, int]) -> None:
        say(f"[{i + 1}/{total}] {shape[0]}x{shape[1]}x{shape[2]}")

    rows = bench_shapes(
        dctx, todo, repeats=repeats, with_numpy=not no_numpy, with_clblast=not no_clblast,
        clblast_best=(sweep or {}).get("best"), progress=progress,
    )  # fmt: skip
    meta: dict[str, Any] = {
        "device": dctx.info.name, "platform": dctx.info.platform, "driver": dctx.info.driver_version,
        "device_type": dctx.info.device_type, "compute_units": dctx.info.compute_units, "cpu_count": os.cpu_count(),
        "timing": "median of interleaved rounds (order rotates each round); ours, CLBlast and numpy in one "
                  "process; each OpenCL call waited for by a blocking read of its output (timing.sync); "
                  "min/max beside each median",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "load_average_before": load_before, "load_average_after": load_average(),
        "options": {"sizes": sizes, "inference": inference, "shapes": shapes, "repeats": repeats, "platform": platform,
                    "clblast_sweep": sweep is not None, "clblast_sweep_from": sweep_from and str(sweep_from)},
        "versions": _versions(),
    }  # fmt: skip
    paths = save_results({"meta": meta, "sweep": sweep, "rows": rows}, out_dir)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows))
    click.echo(f"device: {dctx.info.name} ({dctx.info.platform}); load average {meta['load_average_before'][0]} -> "
               f"{meta['load_average_after'][0]}; saved {', '.join(str(p) for p in paths)}")  # fmt: skip


def _earlier_sweep(path: Path, device: str) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        sweep, recorded_on = record["sweep"], record["meta"]["device"]
        best = dict(sweep["best"])
    except (ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(f"{path} is not a gemm.json with a CLBlast sweep ({exc})",
                                 param_hint="--clblast-sweep-from") from exc  # fmt: skip
    if recorded_on != device:
        raise click.BadParameter(f"{path} was swept on {recorded_on!r}, not on {device!r}",
                                 param_hint="--clblast-sweep-from")  # fmt: skip
    # A reused sweep names the run that swept, not the run that reused it last.
    started = sweep.get("reused_from_started") or record["meta"].get("started")
    return {**sweep, "best": best, "reused_from": str(path), "reused_from_started": started}


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("numpy", "pyopencl", "pyclblast", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[func-returns-value]
        out["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        out["numpy_blas"] = None
    return out


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    width = int(spec.split(".")[0] or 0) + len(suffix)
    return ("-" if value is None else format(value, spec) + suffix).rjust(width)


def _noise(row: dict[str, Any], ref: str) -> str:
    return "x~" if row.get(f"ours_vs_{ref}_within_noise") else "x "


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'M':>5} {'N':>5} {'K':>5} {'ours':>9} {'CLBlast':>9} {'numpy':>9} {'vs CLBlast':>10} {'vs numpy':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['m']:>5} {r['n']:>5} {r['k']:>5} {_fmt(r['ours_gflops'], '9.3g')} "
            f"{_fmt(r['clblast_gflops'], '9.3g')} {_fmt(r['numpy_gflops'], '9.3g')} "
            f"{_fmt(r['ours_vs_clblast'], '9.3g', _noise(r, 'clblast'))} "
            f"{_fmt(r['ours_vs_numpy'], '8.3g', _noise(r, 'numpy'))}"
        )
    lines.append("GFLOPS: medians of interleaved rounds. Ratios: ours / reference, median of per-round ratios;")
    lines.append("'x~' marks a ratio within noise (its per-round range includes 1).")
    return "\n".join(lines)
