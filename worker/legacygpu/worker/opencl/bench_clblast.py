"""CLBlast as a fair reference: a bounded parameter sweep through its override API.

Design
------
CLBlast ships tuned parameters for the GPUs in its database; for a device it
does not know (PoCL, rusticl on llvmpipe, often a Polaris card under a new
driver) it runs generic defaults, and below ``XGEMM_MIN_INDIRECT_SIZE``³ it
picks its "direct" GEMM kernel. Comparing against those defaults flatters
us. So before the benchmark proper, :func:`sweep` times a fixed, small list
of :class:`Candidate` parameter sets, set with
``pyclblast.override_parameters`` (CLBlast rebuilds its kernels after each
override), on two representative shapes per class:

- ``square`` (M > 32): the indirect ``Xgemm`` kernel with several tilings,
  and the ``XgemmDirect`` kernel with several, each forced through
  ``GemmRoutine``'s ``XGEMM_MIN_INDIRECT_SIZE``;
- ``skinny`` (1 < M <= 32): the same candidates;
- ``gemv`` (M = 1): CLBlast's own ``sgemv`` (``y = Bᵀa``), with the
  ``Xgemv``/``XgemvFast`` kernels' parameters swept.

The library defaults are candidate ``default``, measured first (an override
cannot be undone in a process). A candidate's score is the geometric mean of
its median GFLOPS over the class's shapes; a wrong result disqualifies it, and
a call slower than ``SLOW_CALL_S`` is timed once only (that set has lost).
Every call is waited for by reading its output back (``timing.synced``), as
ours is: ``clFinish`` alone returns early on rusticl 22.3.
The sweep runs in a child process, so the parent starts with CLBlast's
defaults intact and can apply any winner (see ``bench_gemm``). On a CPU each
rebuild takes 10-45 s, so the sweep is minutes, not hours; its every
measurement is recorded in the JSON.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bench_timing import interleaved
from .timing import synced

__all__ = [
    "CANDIDATES",
    "SWEEP_SHAPES",
    "Candidate",
    "apply",
    "candidate",
    "clblast_class",
    "import_pyclblast",
    "make_runner",
    "sweep",
]

log = logging.getLogger(__name__)

SINGLE = 32  # CLBlast's precision code for float32
NEVER_DIRECT = 65536  # XGEMM_MIN_INDIRECT_SIZE: direct kernel only below 65536^3 (always)
SLOW_CALL_S = 1.0  # a sweep call slower than this is timed once, not ``repeats`` times
ALWAYS_DIRECT = 0  # ... below 0^3 (never): despite the name, this forces the indirect kernel


@dataclass(frozen=True)
class Candidate:
    """One CLBlast configuration: ``overrides`` maps a CLBlast kernel name to its full parameter set."""

    name: str
    routine: str  # "gemm" or "gemv"
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "routine": self.routine, "overrides": self.overrides}


def _xgemm(mwg: int, nwg: int, kwg: int, mdimc: int, ndimc: int, vwm: int, vwn: int, kwi: int = 2,
           sa: int = 0, sb: int = 0) -> dict[str, dict[str, int]]:  # fmt: skip
    params = {"GEMMK": 0, "KREG": 1, "KWG": kwg, "KWI": kwi, "MDIMA": mdimc, "MDIMC": mdimc, "MWG": mwg,
              "NDIMB": ndimc, "NDIMC": ndimc, "NWG": nwg, "SA": sa, "SB": sb, "STRM": 0, "STRN": 0,
              "VWM": vwm, "VWN": vwn}  # fmt: skip
    return {"GemmRoutine": {"XGEMM_MIN_INDIRECT_SIZE": ALWAYS_DIRECT}, "Xgemm": params}


def _direct(wgd: int, dimc: int, vw: int, kwid: int) -> dict[str, dict[str, int]]:
    params = {"KWID": kwid, "MDIMAD": dimc, "MDIMCD": dimc, "NDIMBD": dimc, "NDIMCD": dimc, "PADA": 1, "PADB": 1,
              "VWMD": vw, "VWND": vw, "WGD": wgd}  # fmt: skip
    return {"GemmRoutine": {"XGEMM_MIN_INDIRECT_SIZE": NEVER_DIRECT}, "XgemmDirect": params}


def _gemv(wgs1: int, wpt1: int, vw2: int, wgs2: int, wpt2: int) -> dict[str, dict[str, int]]:
    return {"Xgemv": {"WGS1": wgs1, "WPT1": wpt1}, "XgemvFast": {"VW2": vw2, "WGS2": wgs2, "WPT2": wpt2}}


# Every set satisfies CLBlast's constraints (tile sizes multiples of threads x vector width, KWG a
# multiple of the re-shaped dimensions and of KWI); sizes chosen for CPUs and GCN-like GPUs alike.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("default", "gemm"),
    Candidate("xgemm-64x64x32-v4", "gemm", _xgemm(64, 64, 32, 8, 8, 4, 4)),
    Candidate("xgemm-32x32x32-v4", "gemm", _xgemm(32, 32, 32, 8, 8, 4, 4)),
    Candidate("xgemm-64x64x16-v8", "gemm", _xgemm(64, 64, 16, 8, 8, 8, 8)),
    Candidate("xgemm-128x128x32-v8", "gemm", _xgemm(128, 128, 32, 16, 16, 8, 8)),
    Candidate("xgemm-64x64x32-v4-local", "gemm", _xgemm(64, 64, 32, 16, 16, 4, 4, kwi=8, sa=1, sb=1)),
    Candidate("direct-32-v4", "gemm", _direct(32, 8, 4, 2)),
    Candidate("direct-64-v8", "gemm", _direct(64, 8, 8, 8)),
    Candidate("direct-16-v4", "gemm", _direct(16, 4, 4, 2)),
    Candidate("default", "gemv"),
    Candidate("gemv-64-fast4", "gemv", _gemv(64, 1, 4, 64, 4)),
    Candidate("gemv-128-fast8", "gemv", _gemv(128, 4, 8, 128, 8)),
    Candidate("gemv-256-fast1", "gemv", _gemv(256, 1, 1, 256, 1)),
)
# Two shapes per class; a candidate's score is the geometric mean of its GFLOPS on them.
SWEEP_SHAPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "square": ((512, 512, 512), (1024, 1024, 1024)),
    "skinny": ((8, 1024, 1024), (32, 1024, 1024)),
    "gemv": ((1, 1024, 1024), (1, 4096, 4096)),
}


def clblast_class(m: int) -> str:
    """Which sweep class a problem with ``m`` rows belongs to."""
    return "gemv" if m == 1 else "skinny" if m <= 32 else "square"


def import_pyclblast() -> Any:
    try:
        import pyclblast
    except ImportError:
        log.warning("pyclblast is not installed: CLBlast columns will be empty (pip install pyclblast)")
        return None
    return pyclblast


def apply(pyclblast: Any, device: Any, candidate: Candidate) -> None:
    """Set ``candidate``'s parameters in this process (CLBlast rebuilds on the next call)."""
    for kernel, params in candidate.overrides.items():
        pyclblast.override_parameters(device, kernel, SINGLE, params)


def make_runner(
    pyclblast: Any, queue: Any, routine: str, m: int, n: int, k: int, a: Any, b: Any, c: Any
) -> Callable[[], None]:
    """One CLBlast call computing ``c = a @ b`` (row-major): ``sgemm``, or ``sgemv`` as ``c = bᵀa`` when M = 1."""
    if routine == "gemv":
        if m != 1:
            raise ValueError(f"gemv needs M = 1, got M = {m}")
        x, y = a.reshape(k), c.reshape(n)  # views of the same buffers
        return lambda: pyclblast.gemv(queue, k, n, b, x, y, a_ld=n, a_transp=True)
    return lambda: pyclblast.gemm(queue, m, n, k, a, b, c, a_ld=k, b_ld=n, c_ld=n)


def _measure(
    pyclblast: Any, dctx: Any, candidate: Candidate, shape: tuple[int, int, int], repeats: int
) -> dict[str, Any]:
    import pyopencl.array as cla

    m, n, k = shape
    rng = np.random.default_rng(1)
    a_h = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    b_h = rng.uniform(-1, 1, (k, n)).astype(np.float32)
    q = dctx.queue
    # zeros, not empty: CLBlast computes beta * C even for beta = 0, and 0 * NaN garbage is NaN
    a, b, c = cla.to_device(q, a_h), cla.to_device(q, b_h), cla.zeros(q, (m, n), np.float32)
    run = synced(make_runner(pyclblast, q, candidate.routine, m, n, k, a, b, c), q, c)  # see timing.sync
    try:
        run()  # warm-up: the rebuild after an override happens here
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        times = [first]
        if first < SLOW_CALL_S:  # a set this slow has lost already: do not spend minutes confirming it
            times += interleaved([run], repeats=repeats - 1, budget_s=0.5, max_rounds=10,
                                 warmup=False)[0]  # fmt: skip
    except Exception as exc:  # an invalid set for this device (e.g. too much local memory)
        return {"m": m, "n": n, "k": k, "gflops": None, "error": f"{type(exc).__name__}: {exc}"}
    ref = a_h.astype(np.float64) @ b_h.astype(np.float64)
    err = float(np.max(np.abs(c.get() - ref)) / max(1e-30, float(np.max(np.abs(ref)))))
    median = float(np.median(times))
    error = None if err < 1e-3 else f"wrong result (relative error {err:.2g})"
    gflops = float(f"{2.0 * m * n * k / median / 1e9:.4g}")
    return {"m": m, "n": n, "k": k, "gflops": gflops, "runs": len(times), "max_rel_error": err, "error": error}


def _sweep_worker(
    device_index: int | None,
    classes: list[str],
    repeats: int,
    candidates: tuple[Candidate, ...],
    shapes: dict[str, tuple[tuple[int, int, int], ...]],
) -> dict[str, Any]:
    from .device import open_device

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pyclblast = import_pyclblast()
    dctx = open_device(device_index)
    results: list[dict[str, Any]] = []
    for candidate in candidates:
        todo = [c for c in classes if (c == "gemv") == (candidate.routine == "gemv")]
        if not todo:
            continue
        log.info("CLBlast sweep: %s %s", candidate.routine, candidate.name)
        try:
            apply(pyclblast, dctx.device, candidate)
        except Exception as exc:
            results.append({**candidate.to_dict(), "error": f"{type(exc).__name__}: {exc}", "classes": {}})
            continue
        per_class = {}
        for cls in todo:
            rows = [_measure(pyclblast, dctx, candidate, s, repeats) for s in shapes[cls]]
            ok = all(r["error"] is None for r in rows)
            score = math.exp(sum(math.log(r["gflops"]) for r in rows) / len(rows)) if ok else None
            per_class[cls] = {"shapes": rows, "score_gflops": None if score is None else float(f"{score:.4g}")}
        results.append({**candidate.to_dict(), "error": None, "classes": per_class})
    return {"candidates": results, "best": _best(results, classes)}


def _best(results: list[dict[str, Any]], classes: list[str]) -> dict[str, str]:
    best: dict[str, str] = {}
    for cls in classes:
        scored = [(r["classes"][cls]["score_gflops"], r["name"]) for r in results
                  if cls in r["classes"] and r["classes"][cls]["score_gflops"] is not None]  # fmt: skip
        if scored:
            best[cls] = max(scored)[1]
    return best


def sweep(
    device_index: int | None,
    classes: list[str],
    repeats: int = 3,
    *,
    candidates: tuple[Candidate, ...] = CANDIDATES,
    shapes: dict[str, tuple[tuple[int, int, int], ...]] | None = None,
) -> dict[str, Any]:
    """Run the sweep for ``classes`` in a fresh process; ``{"candidates": [...], "best": {class: name}, "shapes"}``.

    Each class's library ``default`` must come before its overrides in ``candidates`` (an override
    cannot be undone).
    """
    shapes = dict(shapes or SWEEP_SHAPES)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(_sweep_worker, (device_index, classes, repeats, candidates, shapes))
    result["shapes"] = {cls: [list(s) for s in shapes[cls]] for cls in classes}
    return result


def candidate(routine: str, name: str, candidates: tuple[Candidate, ...] = CANDIDATES) -> Candidate:
    """The candidate called ``name`` for ``routine``."""
    for c in candidates:
        if c.routine == routine and c.name == name:
            return c
    raise KeyError(f"no CLBlast candidate {name!r} for {routine}")
