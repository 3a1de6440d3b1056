"""Fair timing for the benchmarks on a shared machine: interleaved rounds, medians, spreads.

Design
------
Every contender of one measurement runs in the same process, one call at a
time, in rounds: round ``r`` starts with contender ``r mod n`` so no one is
always first (or always right after a cache-warming neighbour). Each
contender is warmed up once before the first round (compilation and page
faults are not timed). The number of rounds is at least ``repeats``; when one
round is short, more rounds are run, up to ``budget_s`` seconds in all
(capped at ``max_rounds``), so small problems get a stable median too.

A contender's figure is the **median** of its runs, with min and max beside
it (never the best run alone: under load the best run is luck). A ratio of
two contenders is also taken per round (paired: the two calls of a round ran
under nearly the same load); :func:`ratio_summary` reports the median of those
ratios with their quartiles, and says the ratio is *within noise* when the
interquartile range includes 1 (min and max are recorded too, but on a
loaded machine one disturbed round makes them span 1 almost always).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["interleaved", "load_average", "ratio_summary", "summary"]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(
    runs: Sequence[Callable[[], object]],
    *,
    repeats: int,
    finish: Callable[[], object] = lambda: None,
    budget_s: float = 1.0,
    max_rounds: int = 50,
    warmup: bool = True,
) -> list[list[float]]:
    """Wall seconds of every run of every callable (one list per callable), taken in rotating rounds."""
    if warmup:
        for run in runs:
            run()
            finish()
    times: list[list[float]] = [[] for _ in runs]
    rounds = max(1, repeats)
    done = 0
    while done < rounds:
        for j in range(len(runs)):
            i = (done + j) % len(runs)
            start = time.perf_counter()
            runs[i]()
            finish()
            times[i].append(time.perf_counter() - start)
        done += 1
        if done == 1:
            first = sum(t[0] for t in times)
            rounds = max(rounds, min(max_rounds, int(budget_s / max(first, 1e-6))))
    return times


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``median``, ``min``, ``max`` and ``n`` of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Paired per-round ratios ``numerator[i] / denominator[i]``: median, quartiles, min, max, within noise.

    Pass times the other way round to get a speed ratio: ``ratio_summary(ref_times, our_times)``
    is how many times faster we are. ``within_noise`` is true when the interquartile range of the
    paired ratios includes 1: half the rounds or more disagree with the median about who is faster.
    """
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True) if b > 0)
    if not ratios:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None, "within_noise": None}
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3

    def sig(x: float) -> float:
        return float(f"{x:.{digits}g}")

    return {
        "median": sig(statistics.median(ratios)),
        "q1": sig(q1),
        "q3": sig(q3),
        "min": sig(ratios[0]),
        "max": sig(ratios[-1]),
        "within_noise": q1 <= 1.0 <= q3,
    }
