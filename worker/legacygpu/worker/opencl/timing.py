"""Timing OpenCL work so that every driver's figure means the same thing.

Design
------
A wall-clock time of OpenCL work is only right if the clock stops after the
work has finished. ``clFinish`` is supposed to guarantee that, and on PoCL it
does, but Mesa rusticl 22.3 (Debian 12's ``mesa-opencl-icd``) returns from
``clFinish`` at once now and then while a kernel it already handed to its
worker thread is still running (measured on llvmpipe: a 128^3 GEMM whose
``finish`` took 0.00 ms, after which a one-float blocking read waited 240 ms).
The autotuner took the best of three such runs, so one early return crowned
a kernel at ~100x its real speed.

So :func:`sync` does not trust ``finish``: it reads the last element of the
output back with a *blocking* read. On an in-order queue that read cannot
complete before the kernel that writes the buffer, whatever the driver does
with ``clFinish``; it costs one 4-byte transfer.

:func:`measure` times a callable on enough work: it runs it until both
``min_runs`` runs and ``min_seconds`` of measured time have passed (capped
by ``max_runs``), syncing after every run, and returns each run's time;
:class:`Timing` summarises them (median, the spread between the quartiles,
the best). The median is the figure to compare: a single disturbed or
mis-synchronised run moves the best, not the median. :func:`synced` wraps
a call so that it returns only when its output is written: the benchmarks
(``bench_gemm``, ``bench_clblast``) time those wrapped calls, so ours and
CLBlast are clocked the way the tuner is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Timing", "gflops", "measure", "ratio_within", "sync", "synced"]


def sync(queue: Any, array: Any) -> float:
    """Block until the work that writes ``array`` (a pyopencl Array) is done; return its last element.

    The wait is a blocking read of that element.

    ``queue.finish()`` is called too (it flushes), but the read is what makes
    the wait certain on drivers whose ``clFinish`` returns early (rusticl 22.3).
    """
    import pyopencl as cl

    queue.finish()
    if array.size == 0:
        return 0.0
    itemsize = array.dtype.itemsize
    one = np.empty(1, array.dtype)
    cl.enqueue_copy(queue, one, array.base_data, src_offset=array.offset + (array.size - 1) * itemsize,
                    is_blocking=True)  # fmt: skip
    return float(one[0])


def synced(run: Callable[[], object], queue: Any, array: Any) -> Callable[[], None]:
    """``run`` followed by :func:`sync` on ``array``, its output: a call that returns when the work is done."""

    def call() -> None:
        run()
        sync(queue, array)

    return call


@dataclass(frozen=True)
class Timing:
    """Per-run wall times of one measurement, in seconds."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def spread(self) -> tuple[float, float]:
        """The lower and upper quartile (both equal the median for fewer than 4 runs)."""
        if len(self.seconds) < 4:
            return self.median, self.median
        q = statistics.quantiles(self.seconds, n=4)
        return q[0], q[2]

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.spread
        return {"runs": len(self.seconds), "median_s": self.median, "q1_s": lo, "q3_s": hi, "best_s": self.best}


def measure(
    run: Callable[[], object],
    wait: Callable[[], object],
    *,
    min_runs: int = 3,
    min_seconds: float = 0.2,
    max_runs: int = 50,
    before: Callable[[], object] | None = None,
) -> Timing:
    """Time ``run`` (followed by ``wait``, which must block until its work is done) on enough work.

    ``before`` runs untimed ahead of each run (e.g. poisoning the output so a
    run that did nothing is caught by the caller's check afterwards).
    """
    times: list[float] = []
    total = 0.0
    while len(times) < max_runs and (len(times) < min_runs or total < min_seconds):
        if before is not None:
            before()
        start = time.perf_counter()
        run()
        wait()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
    return Timing(tuple(times))


def gflops(m: int, n: int, k: int, seconds: float) -> float:
    """SGEMM GFLOPS of an (M, N, K) problem done in ``seconds``."""
    return 2.0 * m * n * k / max(seconds, 1e-12) / 1e9


def ratio_within(a: float, b: float, tolerance: float) -> bool:
    """Whether ``a`` and ``b`` differ by at most a factor ``tolerance`` (> 1) either way."""
    if a <= 0 or b <= 0:
        return False
    return max(a / b, b / a) <= tolerance
