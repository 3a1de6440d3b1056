"""The GEMM autotuner and its on-disk cache of winners.

Design
------
:class:`TuningCache` keeps, per device, the winning :class:`GemmParams` for
each shape class. It is stored as one JSON file per device in the cache
directory (``$LEGACYGPU_CACHE_DIR/tuning``, else
``$XDG_CACHE_HOME/legacygpu/tuning``, else ``~/.cache/legacygpu/tuning``),
named after the device's identity: platform, device name and driver version
(a driver update invalidates the winners, as it should). Each entry also
records a hash of the kernel source, so winners tuned for an older kernel
are ignored rather than trusted.

:class:`Autotuner` searches a candidate list per shape class (see
:func:`candidates`) on representative problems: every candidate is compiled
(a build failure is logged as a warning and skipped), run on an odd-sized
problem and on the tuned size and compared with numpy (a wrong result
rejects the candidate), then timed with :func:`~.timing.measure`: at least
``repeats`` runs and ``min_seconds`` of work, the output poisoned with NaN
before each run and waited for by reading it back (:func:`~.timing.sync`;
rusticl 22.3's ``clFinish`` can return before the kernel has run, which is
how the tuner once reported 313 GFLOPS on two CPU cores), each run's last
element checked, and the result of the timed runs compared with numpy
again. The figure is the median run. The fastest verified candidate wins.

Before the cache is saved, the winner is **confirmed**: a fresh
:class:`~.gemm.Gemm` that reads the winner from the cache, as the executor
and ``legacygpu bench gemm`` do, multiplies fresh operands of the tuned size;
its median (at least 5 runs and 0.1 s) must agree with the tuner's figure
within a factor :data:`CONFIRM_TOLERANCE` (up to three tries, since the
machine may be busy). An unconfirmed class is not saved, and
:class:`TuningNotConfirmed` names it. Progress is reported through a
callback (the CLI draws a rich progress bar).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device import DeviceContext, DeviceInfo, KernelBuildError, OpenCLError
from .gemm import SHAPE_CLASSES, Gemm, GemmParams, default_params, kernel_source, kernel_style
from .timing import Timing, gflops, measure, ratio_within, sync

__all__ = [
    "TUNING_PROBLEMS",
    "Autotuner",
    "Candidate",
    "CandidateResult",
    "TuningCache",
    "TuningNotConfirmed",
    "candidates",
    "default_cache_dir",
    "kernel_hash",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1

# The confirmation run's median must be within this factor of the tuner's figure, either way.
CONFIRM_TOLERANCE = 1.5


class TuningNotConfirmed(OpenCLError):
    """A winner's speed could not be confirmed by an independent run; it was not saved."""


# Representative (M, N, K) per shape class: full and --quick.
TUNING_PROBLEMS: dict[str, dict[str, tuple[int, int, int]]] = {
    "full": {"gemv": (1, 2048, 2048), "skinny": (16, 1024, 1024), "medium": (32, 1024, 1024),
             "square": (1024, 1024, 1024)},
    "quick": {"gemv": (1, 1024, 1024), "skinny": (16, 512, 512), "medium": (32, 512, 512),
              "square": (512, 512, 512)},
}


def default_cache_dir() -> Path:
    """Where tuning results live (see the module docstring)."""
    if os.environ.get("LEGACYGPU_CACHE_DIR"):
        return Path(os.environ["LEGACYGPU_CACHE_DIR"]) / "tuning"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "legacygpu" / "tuning"


@functools.cache
def kernel_hash() -> str:
    return hashlib.sha256(kernel_source().encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"


class TuningCache:
    """Tuned GEMM parameters per device and shape class, persisted as JSON."""

    def __init__(self, directory: Path | str | None = None, *, persistent: bool = True) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.persistent = persistent  # False: never reads or writes the directory (see in_memory)
        self._data: dict[str, dict[str, Any]] = {}  # cache_key -> file document

    @classmethod
    def in_memory(cls) -> TuningCache:
        """A cache that starts empty and stays off the disk (the tuner's confirmation runs use one)."""
        return cls(persistent=False)

    @classmethod
    def load_default(cls) -> TuningCache:
        return cls()

    def path_for(self, info: DeviceInfo) -> Path:
        digest = hashlib.sha256(info.cache_key.encode()).hexdigest()[:8]
        name = f"{_slug(info.platform)}__{_slug(info.name)}__{_slug(info.driver_version)}__{digest}.json"
        return self.directory / name

    def _doc(self, info: DeviceInfo) -> dict[str, Any]:
        doc = self._data.get(info.cache_key)
        if doc is None:
            doc = {"format": CACHE_FORMAT, "platform": info.platform, "device": info.name,
                   "driver": info.driver_version, "entries": {}}  # fmt: skip
            path = self.path_for(info)
            if self.persistent and path.is_file():
                try:
                    loaded = json.loads(path.read_text())
                    if loaded.get("format") == CACHE_FORMAT and isinstance(loaded.get("entries"), dict):
                        doc = loaded
                    else:
                        log.warning("ignoring tuning cache %s: unknown format", path)
                except (OSError, ValueError) as exc:
                    log.warning("ignoring unreadable tuning cache %s: %s", path, exc)
            self._data[info.cache_key] = doc
        return doc

    def entry(self, info: DeviceInfo, cls: str) -> dict[str, Any] | None:
        """The raw cached entry for a shape class, if it matches the current kernel."""
        entry = self._doc(info)["entries"].get(cls)
        if not isinstance(entry, dict) or entry.get("kernel") != kernel_hash():
            return None
        return entry

    def lookup(self, info: DeviceInfo, cls: str) -> GemmParams | None:
        entry = self.entry(info, cls)
        if entry is None:
            return None
        try:
            params = GemmParams.from_dict(entry["params"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring bad tuning entry for %s/%s: %s", info.name, cls, exc)
            return None
        return None if params.problems(info) else params

    def store(self, info: DeviceInfo, cls: str, params: GemmParams, **extra: Any) -> None:
        self._doc(info)["entries"][cls] = {
            "params": params.to_dict(), "kernel": kernel_hash(), "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }  # fmt: skip

    def save(self, info: DeviceInfo) -> Path:
        if not self.persistent:
            raise OpenCLError("an in-memory tuning cache is not saved")
        path = self.path_for(info)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._doc(info), indent=2, sort_keys=True))
        tmp.replace(path)
        return path


# -- the search space --------------------------------------------------------------

# Per (device kind, shape class): parameter -> values. Filtered by _plausible().
_SPACES: dict[tuple[str, str], dict[str, Sequence[Any]]] = {
    ("cpu", "gemv"): {"mwi": [1, 2, 4], "mdimc": [1], "vw": [8, 16], "nwv": [1, 2, 4, 8, 16],
                      "ndimc": [1, 2, 4, 8, 16], "ku": [1, 2, 4, 8], "pb": [False, True]},
    ("cpu", "skinny"): {"mwi": [2, 4, 8, 16], "mdimc": [1, 2, 4], "vw": [8, 16], "nwv": [1, 2, 4],
                        "ndimc": [1, 2, 4, 8], "ku": [1, 2, 4], "pa": [False, True], "pb": [False, True],
                        "mfirst": [False, True]},
    ("cpu", "medium"): {"mwi": [2, 4, 8, 16], "mdimc": [1, 2, 4], "vw": [8, 16], "nwv": [1, 2, 4],
                        "ndimc": [1, 2, 4, 8], "ku": [1, 2, 4], "pa": [False, True], "pb": [False, True],
                        "mfirst": [False, True]},
    ("cpu", "square"): {"mwi": [4, 6, 8], "mdimc": [1, 2, 4, 8], "vw": [8, 16], "nwv": [1, 2],
                        "ndimc": [1, 2, 4], "ku": [1, 2, 4], "pa": [False, True], "pb": [False, True],
                        "mfirst": [False, True]},
    # llvmpipe: work-items are SIMD lanes (8 per 256-bit register): scalar or short vectors,
    # work-groups a multiple of 8 wide along N; local memory is ordinary memory plus barriers.
    ("lanes", "gemv"): {"mwi": [1, 2], "mdimc": [1, 2], "vw": [1, 2, 4], "nwv": [1, 2, 4, 8],
                        "ndimc": [8, 16, 32, 64], "ku": [1, 2, 4], "strn": [False, True], "pb": [False, True]},
    ("lanes", "skinny"): {"mwi": [1, 2, 4, 8], "mdimc": [1, 2, 4], "vw": [1, 2, 4, 8], "nwv": [1, 2, 4, 8],
                          "ndimc": [8, 16, 32], "ku": [1, 2, 4], "strn": [False, True], "pa": [False, True],
                          "pb": [False, True], "mfirst": [False, True]},
    ("lanes", "medium"): {"mwi": [2, 4, 8], "mdimc": [1, 2, 4], "vw": [1, 2, 4, 8], "nwv": [1, 2, 4, 8],
                          "ndimc": [8, 16, 32], "ku": [1, 2, 4], "strn": [False, True], "pa": [False, True],
                          "pb": [False, True], "mfirst": [False, True]},
    ("lanes", "square"): {"mwi": [2, 4, 8], "mdimc": [2, 4, 8], "vw": [1, 2, 4, 8], "nwv": [1, 2, 4, 8],
                          "ndimc": [8, 16, 32], "ku": [1, 2, 4], "local": [False, True], "kwg": [16],
                          "strn": [False, True], "pa": [False, True], "pb": [False, True],
                          "mfirst": [False, True]},
    ("gpu", "gemv"): {"mwi": [1, 2, 4], "mdimc": [1], "vw": [1, 2, 4], "nwv": [1, 2],
                      "ndimc": [32, 64, 128, 256], "ku": [1, 2, 4], "strn": [False, True], "pb": [False, True]},
    ("gpu", "skinny"): {"local": [True], "mwi": [1, 2, 4], "mdimc": [4, 8, 16], "vw": [1, 2, 4],
                        "nwv": [1, 2], "ndimc": [8, 16, 32], "ku": [1, 2, 4], "kwg": [8, 16, 32],
                        "strn": [False, True], "pb": [False, True]},
    ("gpu", "medium"): {"local": [True], "mwi": [1, 2, 4], "mdimc": [4, 8, 16], "vw": [1, 2, 4],
                        "nwv": [1, 2], "ndimc": [8, 16, 32], "ku": [1, 2, 4], "kwg": [8, 16, 32],
                        "strn": [False, True], "pb": [False, True]},
    ("gpu", "square"): {"local": [True], "mwi": [2, 4, 8], "mdimc": [8, 16, 32], "vw": [1, 2, 4, 8],
                        "nwv": [1, 2], "ndimc": [8, 16, 32], "ku": [1, 2, 4], "kwg": [8, 16, 32],
                        "strn": [False, True], "pa": [False, True], "pb": [False, True],
                        "mfirst": [False, True]},
}  # fmt: skip


def _kind(info: DeviceInfo) -> str:
    return kernel_style(info)


def _plausible(p: GemmParams, info: DeviceInfo) -> bool:
    block = p.mwi * p.nwv * p.vw  # accumulators per work-item, in floats
    kind = _kind(info)
    regs = 256 if kind == "cpu" else 64
    wg = p.mdimc * p.ndimc
    if block > regs or p.problems(info):
        return False
    if kind == "gpu":
        return 64 <= wg <= 256
    if kind == "lanes":  # up to 64 accumulators: llvmpipe loads lane by lane, so big blocks pay
        return p.ndimc % 8 == 0 and 8 <= wg <= 256 and block <= 64
    return block >= 8 and wg <= 64


@dataclass(frozen=True)
class Candidate:
    """Parameters to try; ``source`` overrides the kernel source (fault-injection tests)."""

    params: GemmParams
    source: str | None = None
    label: str = ""

    def describe(self) -> str:
        return self.label or self.params.short()


def candidates(info: DeviceInfo, cls: str, *, count: int = 24, seed: int = 0) -> list[Candidate]:
    """A reproducible sample of ``count`` plausible candidates, the device default first."""
    space = _SPACES[(_kind(info), cls)]
    names = list(space)
    grid = [GemmParams(**dict(zip(names, values, strict=True))) for values in itertools.product(*space.values())]
    grid = [p for p in grid if _plausible(p, info)]
    default = default_params(info, cls)
    rng = random.Random(f"{seed}-{info.cache_key}-{cls}")
    rng.shuffle(grid)
    chosen = [default, *(p for p in grid if p != default)][:count]
    return [Candidate(p) for p in chosen]


def neighbours(params: GemmParams, info: DeviceInfo, cls: str) -> list[Candidate]:
    """Candidates that differ from ``params`` in one parameter by one step in the space."""
    space = _SPACES[(_kind(info), cls)]
    out: list[Candidate] = []
    for name, values in space.items():
        values = list(values)
        current = getattr(params, name)
        if current not in values:
            continue
        i = values.index(current)
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                p = dataclasses.replace(params, **{name: values[j]})
                if _plausible(p, info):
                    out.append(Candidate(p))
    return out


# -- the search ---------------------------------------------------------------------


@dataclass
class CandidateResult:
    """What happened to one candidate: ``status`` is ok, build-failed, wrong or error.

    ``gflops`` is the median of ``timing``'s runs; ``confirmed_gflops`` is set
    on a winner once an independent run has confirmed it.
    """

    candidate: Candidate
    status: str
    gflops: float = 0.0
    max_rel_error: float | None = None
    message: str = ""
    timing: Timing | None = None
    confirmed_gflops: float | None = None


ProgressFn = Callable[[str, int, int, CandidateResult], None]

REL_TOLERANCE = 1e-4


class WrongResult(OpenCLError):
    """A candidate's output differs from numpy (or it did not write its output at all)."""


def _check_problem(cls: str) -> tuple[int, int, int]:
    """A small odd-sized problem of the class, to catch edge handling bugs."""
    return {"gemv": (3, 77, 45), "skinny": (13, 77, 45), "medium": (29, 77, 45), "square": (67, 77, 45)}[cls]


@dataclass
class _Operands:
    """Device operands of one problem, numpy's float64 reference, and a NaN image of C."""

    a: Any
    b: Any
    bias: Any
    c: Any
    ref: np.ndarray
    bias64: np.ndarray
    poison: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        (m, k), n = self.a.shape, self.c.shape[1]
        return int(m), int(n), int(k)


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(1e-30, float(np.max(np.abs(want)))))


class Autotuner:
    """Finds the fastest verified GEMM parameters per shape class and caches them.

    ``repeats`` and ``min_seconds``: every timing is at least that many runs
    and that much measured work (see :func:`~.timing.measure`).
    ``confirm_tolerance``: how far (a factor, either way) a winner's
    confirmation may be from its figure (:data:`CONFIRM_TOLERANCE`; tests of
    the search on tiny problems, whose timings are noise, pass ``inf``).
    """

    def __init__(
        self,
        dctx: DeviceContext,
        cache: TuningCache | None = None,
        *,
        repeats: int = 3,
        min_seconds: float = 0.2,
        confirm_tolerance: float | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.dctx = dctx
        self.confirm_tolerance = CONFIRM_TOLERANCE if confirm_tolerance is None else confirm_tolerance
        self.cache = cache if cache is not None else TuningCache()
        self.repeats = repeats
        self.min_seconds = min_seconds
        self.progress = progress
        self.gemm = Gemm(dctx, tuning=self.cache)
        self._rng = np.random.default_rng(1234)

    def _operands(self, m: int, n: int, k: int) -> _Operands:
        import pyopencl.array as cla

        a = self._rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b = self._rng.uniform(-1, 1, (k, n)).astype(np.float32)
        bias = self._rng.uniform(-1, 1, n).astype(np.float32)
        q = self.dctx.queue
        return _Operands(
            cla.to_device(q, a), cla.to_device(q, b), cla.to_device(q, bias), cla.empty(q, (m, n), np.float32),
            a.astype(np.float64) @ b.astype(np.float64), bias.astype(np.float64), np.full((m, n), np.nan, np.float32),
        )  # fmt: skip

    def _verify(self, ops: _Operands, want: np.ndarray) -> float:
        """The relative error of C (read back, blocking) against ``want``; :class:`WrongResult` if too large."""
        err = _rel_error(ops.c.get(), want)
        if not np.isfinite(err) or err > REL_TOLERANCE:
            raise WrongResult(f"relative error {err:.2e} > {REL_TOLERANCE:g} at {'x'.join(map(str, ops.shape))}")
        return err

    def evaluate(
        self, cand: Candidate, problem: tuple[int, int, int], operands: _Operands, check: _Operands
    ) -> CandidateResult:
        """Build, verify (on the odd-sized check problem and the timed one), then time a candidate."""
        del problem  # the operands carry their shape
        try:
            check.c.set(check.poison)
            self.gemm.run(cand.params, check.a, check.b, bias=check.bias, activation="relu", out=check.c,
                          source=cand.source)  # fmt: skip
            self._verify(check, np.maximum(check.ref + check.bias64, 0.0))
            operands.c.set(operands.poison)
            self.gemm.run(cand.params, operands.a, operands.b, out=operands.c, source=cand.source)
            self._verify(operands, operands.ref)
            timing = self._time(cand, operands)
            err = self._verify(operands, operands.ref)  # what the timed runs computed
        except WrongResult as exc:
            return CandidateResult(cand, "wrong", max_rel_error=None, message=str(exc))
        except KernelBuildError as exc:
            log.warning("skipping GEMM candidate %s: it does not build: %s", cand.describe(), str(exc)[:300])
            return CandidateResult(cand, "build-failed", message=str(exc)[:2000])
        except Exception as exc:  # a driver error at run time: skip, never abort the search
            log.warning("skipping GEMM candidate %s: %s", cand.describe(), exc)
            return CandidateResult(cand, "error", message=str(exc)[:2000])
        return CandidateResult(cand, "ok", gflops=gflops(*operands.shape, timing.median), max_rel_error=err,
                               timing=timing)  # fmt: skip

    def _time(self, cand: Candidate, ops: _Operands) -> Timing:
        """Per-run times of a verified candidate on ``ops``; every run must write C (else :class:`WrongResult`)."""
        q = self.dctx.queue

        def wait() -> None:
            if np.isnan(sync(q, ops.c)):
                raise WrongResult("a timed run did not write its output (the kernel did not run)")

        return measure(
            lambda: self.gemm.run(cand.params, ops.a, ops.b, out=ops.c, source=cand.source), wait,
            min_runs=self.repeats, min_seconds=self.min_seconds, before=lambda: ops.c.set(ops.poison),
        )  # fmt: skip

    def search(
        self,
        cls: str,
        cands: Sequence[Candidate],
        problem: tuple[int, int, int],
        *,
        refine: int = 0,
        final: int = 3,
    ) -> tuple[CandidateResult | None, list[CandidateResult]]:
        """Evaluate ``cands``, then up to ``refine`` neighbours of the leader; return the winner.

        The ``final`` best are timed twice more, taking turns, and ranked by the
        median of those new runs before the winner is named.
        """
        operands = self._operands(*problem)
        check = self._operands(*_check_problem(cls))
        results: list[CandidateResult] = []
        seen: set[Candidate] = set()
        queue = list(cands)
        total = len(queue) + refine
        refined = False
        while queue:
            cand = queue.pop(0)
            if cand in seen:
                total -= 1
                continue
            seen.add(cand)
            result = self.evaluate(cand, problem, operands, check)
            results.append(result)
            if self.progress is not None:
                self.progress(cls, len(results), total, result)
            if not queue and refine and not refined:
                refined = True
                leader = max((r for r in results if r.status == "ok"), key=lambda r: r.gflops, default=None)
                if leader is not None:
                    queue = [c for c in neighbours(leader.candidate.params, self.dctx.info, cls) if c not in seen]
                    queue = queue[:refine]
                total = len(results) + len(queue)
        ok = sorted((r for r in results if r.status == "ok"), key=lambda r: r.gflops, reverse=True)
        if len(ok) > 1 and final:
            # On a shared machine one lucky run can crown the wrong kernel: time the leaders
            # again, taking turns, and rank them by the median of these new runs only (the
            # first runs chose the leaders, so they flatter them: the winner's curse).
            leaders = ok[:final]
            again: dict[int, list[float]] = {id(r): [] for r in leaders}
            for _ in range(2):
                for r in leaders:
                    if r.status != "ok":
                        continue
                    try:
                        again[id(r)] += self._time(r.candidate, operands).seconds
                    except WrongResult as exc:
                        r.status, r.message = "wrong", str(exc)
            for r in leaders:
                if r.status == "ok":
                    r.timing = Timing(tuple(again[id(r)]))
                    r.gflops = gflops(*problem, r.timing.median)
            ok = sorted((r for r in leaders if r.status == "ok"), key=lambda r: r.gflops, reverse=True)
        return (ok[0] if ok else None), results

    def confirm(self, cls: str, winner: CandidateResult, problem: tuple[int, int, int]) -> float:
        """GFLOPS of ``winner`` measured the way its users run it: through a :class:`Gemm` reading the cache.

        Fresh operands of the tuned size, the same clock discipline as the
        search (C poisoned before each run, each run waited for by reading it
        back), and the product checked against numpy.
        """
        mem = TuningCache.in_memory()
        mem.store(self.dctx.info, cls, winner.candidate.params)
        gemm = Gemm(self.dctx, tuning=mem)
        m, n, k = problem
        if gemm.params_for(m, n, k) != winner.candidate.params:  # pragma: no cover - a tuning-class mismatch
            raise OpenCLError(f"{m}x{n}x{k} does not use the {cls} entry")
        ops = self._operands(m, n, k)
        q = self.dctx.queue
        gemm(ops.a, ops.b, out=ops.c)  # warm-up (the build is not timed)
        self._verify(ops, ops.ref)

        def wait() -> None:
            if np.isnan(sync(q, ops.c)):
                raise WrongResult("a confirmation run did not write its output")

        # at least 5 runs and 0.1 s: a single run of a tiny problem is at the mercy of the scheduler
        timing = measure(lambda: gemm(ops.a, ops.b, out=ops.c), wait, before=lambda: ops.c.set(ops.poison),
                         min_runs=max(5, self.repeats), min_seconds=max(0.1, self.min_seconds))  # fmt: skip
        self._verify(ops, ops.ref)
        return gflops(m, n, k, timing.median)

    def tune(
        self,
        classes: Sequence[str] = SHAPE_CLASSES,
        *,
        quick: bool = False,
        count: int | None = None,
        problems: dict[str, tuple[int, int, int]] | None = None,
        refine: int | None = None,
    ) -> dict[str, CandidateResult]:
        """Tune each shape class, confirm each winner, store the confirmed ones and save the cache.

        ``count`` candidates are sampled per class (8 with ``quick``, else 24),
        then up to ``refine`` (default: two thirds as many) neighbours of the leader.
        ``problems`` overrides the representative (M, N, K) per class. Raises
        :class:`TuningNotConfirmed` (after saving the confirmed classes) when a
        winner's figure is not confirmed.
        """
        info = self.dctx.info
        problems = {**TUNING_PROBLEMS["quick" if quick else "full"], **(problems or {})}
        n_first = count if count is not None else (8 if quick else 24)
        refine = refine if refine is not None else max(2, n_first * 2 // 3)
        winners: dict[str, CandidateResult] = {}
        unconfirmed: list[str] = []
        for cls in classes:
            winner, results = self.search(cls, candidates(info, cls, count=n_first), problems[cls], refine=refine)
            if winner is None:
                raise OpenCLError(f"no GEMM candidate for {cls} built and verified on {info.name}")
            for _ in range(3):  # more tries: the machine may have been busy
                winner.confirmed_gflops = self.confirm(cls, winner, problems[cls])
                if ratio_within(winner.gflops, winner.confirmed_gflops, self.confirm_tolerance):
                    break
            else:
                log.warning("not saving the %s winner %s: the tuner measured %.3g GFLOPS, a confirmation run %.3g",
                            cls, winner.candidate.describe(), winner.gflops, winner.confirmed_gflops)  # fmt: skip
                unconfirmed.append(f"{cls} (tuner {winner.gflops:.3g}, confirmation {winner.confirmed_gflops:.3g})")
                continue
            winners[cls] = winner
            self.cache.store(
                info, cls, winner.candidate.params, gflops=float(f"{winner.gflops:.4g}"),
                confirmed_gflops=float(f"{winner.confirmed_gflops:.4g}"), problem=list(problems[cls]),
                runs=len(winner.timing.seconds) if winner.timing else 0,
                tried=len(results), verified=sum(r.status == "ok" for r in results),
            )  # fmt: skip
        self.cache.save(info)
        if unconfirmed:
            raise TuningNotConfirmed(
                f"GEMM timings on {info.name} could not be confirmed within a factor {self.confirm_tolerance:g} "
                f"for {', '.join(unconfirmed)} GFLOPS; those classes keep their defaults"
            )
        return winners
