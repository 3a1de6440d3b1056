"""SGEMM benchmark: our kernels against CLBlast and numpy, on the same device.

Design
------
For every (M, N, K) the same random float32 operands are multiplied by our
:class:`~legacygpu.worker.opencl.gemm.Gemm` and by CLBlast (``pyclblast``,
on the same OpenCL context and queue), and the result of ours is checked
against numpy. Each is warmed up once (kernel compilation is not timed),
then the two take turns, ``repeats`` rounds (more for small problems, up
to ~0.5 s), with a queue finish after every call, so both see the same
machine load; the figure kept is each one's best run (the least disturbed
one on a shared machine), from which GFLOPS = 2*M*N*K / seconds / 1e9.

numpy (OpenBLAS) runs last, in a separate process, so its threads never
compete with PoCL's for the same cores.

:func:`save_results` writes the rows as JSON (a list of objects with at
least ``m, n, k, ours_gflops, clblast_gflops, numpy_gflops`` and the
ratios) and a PNG bar chart.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .device import DeviceContext
from .gemm import Gemm, shape_class

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


def default_shapes(sizes: Sequence[int] = DEFAULT_SQUARE_SIZES, inference: bool = True) -> list[tuple[int, int, int]]:
    shapes = [(s, s, s) for s in sizes]
    if inference:
        shapes += list(DEFAULT_INFERENCE_SHAPES)
    return shapes


def _best_times(runs: Sequence[Callable[[], object]], finish: Callable[[], object], repeats: int) -> list[float]:
    """Best wall time of each callable; the callables take turns so they see the same machine load."""
    for run in runs:  # warm-up: compiles and faults pages in
        run()
        finish()
    best = [float("inf")] * len(runs)
    rounds = repeats
    done = 0
    while done < rounds:
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            finish()
            best[i] = min(best[i], time.perf_counter() - start)
        done += 1
        if done == 1:  # small problems: more rounds, up to ~0.5 s for the slowest
            rounds = max(repeats, min(50, int(0.5 / max(max(best), 1e-6))))
    return best


def _gflops(m: int, n: int, k: int, seconds: float) -> float:
    return 2.0 * m * n * k / seconds / 1e9


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (for readable JSON)."""
    return float(f"{x:.{digits}g}")


def _numpy_worker(shapes: list[tuple[int, int, int]], repeats: int) -> list[float]:
    rng = np.random.default_rng(0)
    out = []
    for m, n, k in shapes:
        a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        c = np.empty((m, n), np.float32)
        (seconds,) = _best_times([functools.partial(np.matmul, a, b, out=c)], lambda: None, repeats)
        out.append(_gflops(m, n, k, seconds))
    return out


def numpy_gflops(shapes: list[tuple[int, int, int]], repeats: int = 3) -> list[float]:
    """numpy's SGEMM GFLOPS per shape, measured in a fresh process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_numpy_worker, (shapes, repeats))


def _clblast(dctx: DeviceContext) -> Any:
    try:
        import pyclblast
    except ImportError:
        log.warning("pyclblast is not installed: CLBlast columns will be empty (pip install pyclblast)")
        return None
    return pyclblast


def bench_shapes(
    dctx: DeviceContext,
    shapes: Sequence[tuple[int, int, int]],
    *,
    repeats: int = 3,
    with_numpy: bool = True,
    with_clblast: bool = True,
    gemm: Gemm | None = None,
    progress: Callable[[int, int, tuple[int, int, int]], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every shape; return one row (a dict) per shape."""
    import pyopencl.array as cla

    gemm = gemm or Gemm(dctx)
    clblast = _clblast(dctx) if with_clblast else None
    q = dctx.queue
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for i, (m, n, k) in enumerate(shapes):
        if progress is not None:
            progress(i, len(shapes), (m, n, k))
        a_h = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b_h = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        a, b = cla.to_device(q, a_h), cla.to_device(q, b_h)
        c = cla.empty(q, (m, n), np.float32)
        params = gemm.params_for(m, n, k)
        runs: list[Callable[[], object]] = [functools.partial(gemm, a, b, out=c)]
        if clblast is not None:
            c2 = cla.empty(q, (m, n), np.float32)

            def run_clblast(a: Any = a, b: Any = b, c2: Any = c2, m: int = m, n: int = n, k: int = k) -> None:
                clblast.gemm(q, m, n, k, a, b, c2, a_ld=k, b_ld=n, c_ld=n)

            try:  # CLBlast fails on some drivers: record that and carry on
                run_clblast()
                q.finish()
                runs.append(run_clblast)
            except Exception as exc:
                log.warning("CLBlast failed on %dx%dx%d: %s", m, n, k, exc)
        times = _best_times(runs, q.finish, repeats)
        ref = a_h.astype(np.float64) @ b_h.astype(np.float64)
        err = float(np.max(np.abs(c.get() - ref)) / max(1e-30, float(np.max(np.abs(ref)))))
        row: dict[str, Any] = {
            "m": m, "n": n, "k": k, "shape_class": shape_class(m, n, k),
            "ours_gflops": _sig(_gflops(m, n, k, times[0])), "ours_ms": _sig(times[0] * 1e3),
            "ours_params": params.to_dict(),
            "tuned": gemm.tuning.lookup(dctx.info, shape_class(m, n, k)) is not None,
            "ours_max_rel_error": err,
            "clblast_gflops": None, "clblast_ms": None, "numpy_gflops": None,
        }  # fmt: skip
        if len(times) > 1:
            row["clblast_gflops"] = _sig(_gflops(m, n, k, times[1]))
            row["clblast_ms"] = _sig(times[1] * 1e3)
        rows.append(row)
        del a, b, c
    if with_numpy:
        for row, gf in zip(rows, numpy_gflops([(r["m"], r["n"], r["k"]) for r in rows], repeats), strict=True):
            row["numpy_gflops"] = _sig(gf)
    for row in rows:
        cl_gf, np_gf = row["clblast_gflops"], row["numpy_gflops"]
        row["ours_vs_clblast"] = _sig(row["ours_gflops"] / cl_gf, 3) if cl_gf else None
        row["ours_vs_numpy"] = _sig(row["ours_gflops"] / np_gf, 3) if np_gf else None
    return rows


def save_results(rows: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any], stem: str = "gemm") -> list[Path]:
    """Write ``<stem>.json`` (the rows), ``<stem>-meta.json`` and ``<stem>.png``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(rows, indent=2))
    meta_path = out_dir / f"{stem}-meta.json"
    meta_path.write_text(json.dumps(meta, indent=2, default=str))

    labels = [f"{r['m']}x{r['n']}x{r['k']}" for r in rows]
    x = np.arange(len(rows))
    series = [("ours", "ours_gflops"), ("CLBlast", "clblast_gflops"), ("numpy", "numpy_gflops")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    width = 0.27
    for j, (name, key) in enumerate(series):
        ax.bar(x + (j - 1) * width, [r[key] or 0.0 for r in rows], width, label=name)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("GFLOPS (best run)")
    ax.set_yscale("log")
    ax.set_title(f"SGEMM (M x N x K) on {meta.get('device', '?')}")
    ax.legend()
    fig.tight_layout()
    png_path = out_dir / f"{stem}.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [json_path, meta_path, png_path]
