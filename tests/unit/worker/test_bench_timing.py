"""``bench_timing``: rotating interleaved rounds, medians and paired ratios (no timing asserted)."""

from __future__ import annotations

import pytest

from legacygpu.worker.opencl.bench_timing import interleaved, ratio_summary, summary


def test_rounds_rotate_who_goes_first_and_every_call_is_finished() -> None:
    calls: list[str] = []
    runs = [lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")]
    finished: list[int] = []
    times = interleaved(runs, repeats=3, finish=lambda: finished.append(len(calls)), budget_s=0.0)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, once each
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # round r starts with contender r mod 3
    assert finished == list(range(1, len(calls) + 1))  # the queue is finished after every call, warm-ups too
    assert [len(t) for t in times] == [3, 3, 3] and all(x >= 0 for t in times for x in t)


def test_short_rounds_get_more_rounds_up_to_the_cap() -> None:
    times = interleaved([lambda: None], repeats=2, budget_s=10.0, max_rounds=7, warmup=False)
    assert len(times[0]) == 7
    assert len(interleaved([lambda: None], repeats=9, budget_s=10.0, max_rounds=7)[0]) == 9  # repeats is a floor


def test_summary_is_median_min_max() -> None:
    assert summary([3.0, 1.0, 10.0, 2.0, 4.0]) == {"median": 3.0, "min": 1.0, "max": 10.0, "n": 5}


def test_ratio_is_paired_per_round_not_a_ratio_of_medians() -> None:
    # round by round we are 2x faster, although the load moved both by 10x between rounds
    ref, ours = [2.0, 20.0, 4.0, 40.0], [1.0, 10.0, 2.0, 20.0]
    r = ratio_summary(ref, ours)
    assert (r["median"], r["q1"], r["q3"], r["min"], r["max"]) == (2.0, 2.0, 2.0, 2.0, 2.0)
    assert r["within_noise"] is False


def test_within_noise_when_the_quartiles_straddle_one() -> None:
    r = ratio_summary([1.2, 0.8, 1.1, 0.9, 1.05], [1.0] * 5)
    assert r["median"] == pytest.approx(1.05) and r["q1"] < 1 < r["q3"] and r["within_noise"] is True
    # one disturbed round spans 1 with min/max, but not the quartiles: not noise
    r = ratio_summary([3.0, 3.1, 2.9, 3.0, 0.5], [1.0] * 5)
    assert r["min"] < 1 < r["max"] and r["within_noise"] is False


def test_no_runs_gives_empty_ratio() -> None:
    assert ratio_summary([], []) == {"median": None, "q1": None, "q3": None, "min": None, "max": None,
                                     "within_noise": None}  # fmt: skip
