"""SGEMM benchmark: our kernels against CLBlast (at its best swept parameters) and numpy, interleaved.

Design
------
For every (M, N, K) the same random float32 operands are multiplied by

- ours: :class:`~legacygpu.worker.opencl.gemm.Gemm` with whatever the tuning cache holds;
- CLBlast (``pyclblast``) on the same OpenCL context and queue, with the
  parameter set that won ``bench_clblast``'s sweep for the shape's class, and
  its ``sgemv`` (not ``sgemm``) when M = 1;
- numpy (OpenBLAS) in this same process.

All three are warmed up once, then take turns in rotating rounds
(``bench_timing.interleaved``), so they see the same machine load. Each
OpenCL call is waited for by reading its output back
(:func:`~.timing.synced`), not by ``queue.finish()`` alone, which returns
early on rusticl 22.3 and would clock an enqueue, not a product; at least ``repeats`` rounds, more for small
problems. Each contender's figure is the median of its runs (GFLOPS =
2MNK / median seconds), with the min and max; ratios are paired per round
and flagged ``within_noise`` when their interquartile range includes 1. Our result and
CLBlast's are checked against float64 numpy. The load average is taken
before and after every shape and the whole run.

CLBlast's parameters can only be overridden, never reset, in a process: the
shapes are therefore run grouped by winning candidate, those where the
library defaults won first.

:func:`save_results` writes ``gemm.json`` (``{"meta", "sweep", "rows"}``)
and ``gemm.png`` (median GFLOPS of the three with min-max whiskers).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import bench_clblast
from .bench_timing import interleaved, load_average, ratio_summary
from .device import DeviceContext
from .gemm import Gemm, shape_class
from .timing import synced
from .tuning import TuningCache

__all__ = [
    "DEFAULT_INFERENCE_SHAPES",
    "DEFAULT_SQUARE_SIZES",
    "bench_shapes",
    "default_shapes",
    "save_results",
]

log = logging.getLogger(__name__)

DEFAULT_SQUARE_SIZES = (256, 512, 1024, 2048)
DEFAULT_INFERENCE_SHAPES = tuple((m, nk, nk) for nk in (1024, 4096) for m in (1, 8, 32))
CONTENDERS = ("ours", "clblast", "numpy")


def default_shapes(sizes: Sequence[int] = DEFAULT_SQUARE_SIZES, inference: bool = True) -> list[tuple[int, int, int]]:
    shapes = [(s, s, s) for s in sizes]
    if inference:
        shapes += list(DEFAULT_INFERENCE_SHAPES)
    return shapes


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (for readable JSON)."""
    return float(f"{x:.{digits}g}")


def _rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(1e-30, float(np.max(np.abs(ref)))))


def _figures(prefix: str, flops: float, times: Sequence[float]) -> dict[str, Any]:
    med = float(np.median(times))
    return {
        f"{prefix}_gflops": _sig(flops / med / 1e9),
        f"{prefix}_gflops_min": _sig(flops / max(times) / 1e9),
        f"{prefix}_gflops_max": _sig(flops / min(times) / 1e9),
        f"{prefix}_ms": _sig(med * 1e3),
    }


def _empty(prefix: str) -> dict[str, Any]:
    return {f"{prefix}_gflops": None, f"{prefix}_gflops_min": None, f"{prefix}_gflops_max": None, f"{prefix}_ms": None}


def _plan(shapes: Sequence[tuple[int, int, int]], best: dict[str, str]) -> list[tuple[int, bench_clblast.Candidate]]:
    """(shape index, CLBlast candidate) in run order: shapes whose winner is the library default first."""
    order = []
    for i, (m, _, _) in enumerate(shapes):
        cls = bench_clblast.clblast_class(m)
        routine = "gemv" if cls == "gemv" else "gemm"
        order.append((i, bench_clblast.candidate(routine, best.get(cls, "default"))))
    return sorted(order, key=lambda item: (item[1].name != "default", item[1].routine, item[1].name, item[0]))


def bench_shapes(
    dctx: DeviceContext,
    shapes: Sequence[tuple[int, int, int]],
    *,
    repeats: int = 5,
    with_numpy: bool = True,
    with_clblast: bool = True,
    clblast_best: dict[str, str] | None = None,
    budget_s: float = 1.5,
    gemm: Gemm | None = None,
    progress: Callable[[int, int, tuple[int, int, int]], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every shape; one row (a dict) per shape, in the order given.

    ``clblast_best`` maps a sweep class (``square``, ``skinny``, ``gemv``) to the winning candidate's
    name; classes not in it run CLBlast's library defaults.
    """
    import pyopencl.array as cla

    gemm = gemm or Gemm(dctx, TuningCache.load_default())
    pyclblast = bench_clblast.import_pyclblast() if with_clblast else None
    q = dctx.queue
    rows: list[dict[str, Any] | None] = [None] * len(shapes)
    applied = "default"
    for done, (i, cand) in enumerate(_plan(shapes, clblast_best or {})):
        m, n, k = shapes[i]
        if progress is not None:
            progress(done, len(shapes), (m, n, k))
        rng = np.random.default_rng(i)
        a_h = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b_h = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        a, b = cla.to_device(q, a_h), cla.to_device(q, b_h)
        c = cla.empty(q, (m, n), np.float32)
        names = ["ours"]
        runs: list[Callable[[], object]] = [synced(functools.partial(gemm, a, b, out=c), q, c)]
        c2 = cla.zeros(q, (m, n), np.float32)  # CLBlast reads C even for beta = 0: no NaN garbage
        if pyclblast is not None:
            try:  # CLBlast fails on some drivers: record that and carry on
                if cand.name != applied:
                    bench_clblast.apply(pyclblast, dctx.device, cand)
                    applied = cand.name
                run = synced(bench_clblast.make_runner(pyclblast, q, cand.routine, m, n, k, a, b, c2), q, c2)
                run()
                names.append("clblast")
                runs.append(run)
            except Exception as exc:
                log.warning("CLBlast failed on %dx%dx%d: %s", m, n, k, exc)
        if with_numpy:
            c3 = np.empty((m, n), np.float32)
            names.append("numpy")
            runs.append(functools.partial(np.matmul, a_h, b_h, out=c3))
        load_before = load_average()
        times = dict(zip(names, interleaved(runs, repeats=repeats, budget_s=budget_s), strict=True))
        ref = a_h.astype(np.float64) @ b_h.astype(np.float64)
        flops = 2.0 * m * n * k
        row: dict[str, Any] = {
            "m": m, "n": n, "k": k, "shape_class": shape_class(m, n, k), "rounds": len(times["ours"]),
            "load_average_before": load_before, "load_average_after": load_average(),
            **_figures("ours", flops, times["ours"]),
            "ours_params": gemm.params_for(m, n, k).to_dict(),
            "tuned": gemm.tuning.lookup(dctx.info, shape_class(m, n, k)) is not None,
            "ours_max_rel_error": _rel_error(c.get(), ref),
        }  # fmt: skip
        for name in ("clblast", "numpy"):
            row.update(_figures(name, flops, times[name]) if name in times else _empty(name))
            ratio = ratio_summary(times[name], times["ours"]) if name in times else ratio_summary([], [])
            row[f"ours_vs_{name}"] = ratio["median"]
            for key in ("q1", "q3", "min", "max"):
                row[f"ours_vs_{name}_{key}"] = ratio[key]
            row[f"ours_vs_{name}_within_noise"] = ratio["within_noise"]
        clb = "clblast" in times
        row["clblast_routine"] = cand.routine if clb else None
        row["clblast_candidate"] = cand.name if clb else None
        row["clblast_max_rel_error"] = _rel_error(c2.get(), ref) if clb else None
        rows[i] = row
        del a, b, c, c2
    return [r for r in rows if r is not None]


def save_results(record: dict[str, Any], out_dir: Path, stem: str = "gemm") -> list[Path]:
    """Write ``<stem>.json`` (``record``: meta, sweep, rows) and ``<stem>.png``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")

    rows, meta = record["rows"], record["meta"]
    labels = [f"{r['m']}x{r['n']}x{r['k']}" for r in rows]
    x = np.arange(len(rows))
    series = [("ours", "ours"), ("CLBlast (best swept set; sgemv at M=1)", "clblast"), ("numpy (OpenBLAS)", "numpy")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.8))
    width = 0.27
    for j, (label, key) in enumerate(series):
        med = np.array([r[f"{key}_gflops"] or np.nan for r in rows], dtype=float)
        lo = np.array([r[f"{key}_gflops_min"] or np.nan for r in rows], dtype=float)
        hi = np.array([r[f"{key}_gflops_max"] or np.nan for r in rows], dtype=float)
        ax.bar(x + (j - 1) * width, np.nan_to_num(med), width, label=label,
               yerr=np.nan_to_num(np.vstack([med - lo, hi - med])), capsize=2)  # fmt: skip
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("GFLOPS (median; whiskers: min-max)")
    ax.set_yscale("log")
    load = f"load {meta.get('load_average_before', ['?'])[0]} -> {meta.get('load_average_after', ['?'])[0]}"
    ax.set_title(f"SGEMM (M x N x K) on {meta.get('device', '?')} ({meta.get('platform', '?')}), {load}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = out_dir / f"{stem}.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [json_path, png_path]
