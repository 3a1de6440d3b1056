"""How many tasks a local worker may hold: enough to stay busy through a report and the next push, no more."""

from __future__ import annotations

from legacygpu.core.scheduling import PREFETCH_COVER_MS, prefetch


def test_short_tasks_are_prefetched_up_to_the_cap_and_long_ones_keep_the_floor() -> None:
    assert prefetch(None, floor=2, cap=32) == 2, "unknown model time: the configured floor"
    assert prefetch(0.1, floor=2, cap=32) == 32, "0.1 ms tasks: as many as the cap allows"
    assert prefetch(PREFETCH_COVER_MS / 5, floor=2, cap=32) == 5, "enough to cover the round trip"
    assert prefetch(1000.0, floor=2, cap=32) == 2, "one-second tasks: the floor, never fewer"
    assert prefetch(0.1, floor=4, cap=1) == 4, "a cap under the floor leaves the floor"
