"""The scheduling strategies shared by the local coordinator and the operator."""

from __future__ import annotations

import pytest

from legacygpu.core.scheduling import (
    STRATEGIES,
    AdaptiveStrategy,
    CapabilityMatchStrategy,
    LeastLoadedStrategy,
    Requirements,
    RoundRobinStrategy,
    WorkerInfo,
    eligible,
    make_strategy,
)


def w(id: str, **kw: object) -> WorkerInfo:
    return WorkerInfo(id=id, capacity=kw.pop("capacity", 4), **kw)  # type: ignore[arg-type]


def test_eligibility_filters() -> None:
    needs = Requirements(min_vram_mib=4096, gpu_family="polaris")
    assert eligible(w("a", vram_mib=8192, gpu_family="Polaris"), needs)
    assert not eligible(w("b", vram_mib=2048, gpu_family="polaris"), needs)
    assert not eligible(w("c", vram_mib=8192, gpu_family="vega"), needs)
    assert not eligible(w("d", vram_mib=8192, gpu_family="polaris", accepting=False), needs)
    assert not eligible(w("e", vram_mib=8192, gpu_family="polaris", assigned=4), needs)
    assert not eligible(w("f", models=frozenset({"other"})), Requirements(model="digits"))
    assert eligible(w("g"), Requirements(model="digits")), "no model list means any model"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_respects_requirements_and_capacity(name: str) -> None:
    strategy = make_strategy(name)
    workers = [w("small", vram_mib=2048), w("full", vram_mib=8192, assigned=4), w("big", vram_mib=8192)]
    for _ in range(5):
        chosen = strategy.pick(Requirements(min_vram_mib=4096), workers)
        assert chosen is not None and chosen.id == "big"
    assert strategy.pick(Requirements(min_vram_mib=16384), workers) is None
    assert strategy.pick(Requirements(), []) is None


def test_round_robin_cycles_in_id_order() -> None:
    strategy = RoundRobinStrategy()
    workers = [w("b"), w("a"), w("c")]
    picks = [strategy.pick(Requirements(), workers).id for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_least_loaded_uses_share_of_capacity() -> None:
    workers = [w("a", assigned=2, capacity=2), w("b", assigned=2, capacity=8), w("c", assigned=3, capacity=4)]
    assert LeastLoadedStrategy().pick(Requirements(), workers).id == "b"  # type: ignore[union-attr]


def test_capability_match_is_best_fit() -> None:
    workers = [w("huge", vram_mib=16384), w("fits", vram_mib=4096), w("tiny", vram_mib=1024)]
    assert CapabilityMatchStrategy().pick(Requirements(min_vram_mib=3000), workers).id == "fits"  # type: ignore[union-attr]


def test_adaptive_prefers_fast_workers_until_their_queue_grows() -> None:
    strategy = AdaptiveStrategy()
    fast, slow = w("fast", recent_latency_ms=10.0), w("slow", recent_latency_ms=40.0)
    assert strategy.pick(Requirements(), [fast, slow]).id == "fast"  # type: ignore[union-attr]
    busy_fast = w("fast", recent_latency_ms=10.0, assigned=3)
    assert strategy.pick(Requirements(), [busy_fast, slow]).id == "fast"  # 40 vs 40: tie goes by id
    busier_fast = w("fast", recent_latency_ms=10.0, assigned=4, capacity=8)
    assert strategy.pick(Requirements(), [busier_fast, slow]).id == "slow"  # type: ignore[union-attr]


def test_adaptive_tries_new_workers() -> None:
    new = w("new")
    known = w("known", recent_latency_ms=50.0, assigned=1)
    assert AdaptiveStrategy().pick(Requirements(), [known, new]).id == "new"  # type: ignore[union-attr]


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="adaptive, capability-match, least-loaded, round-robin"):
        make_strategy("random")
