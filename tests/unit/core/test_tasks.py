"""The shared task state machine and retry policy."""

from __future__ import annotations

import random

import pytest

from legacygpu.core.errors import ConflictError
from legacygpu.core.tasks import TERMINAL_PHASES, Phase, RetryPolicy, attempts_left, check_transition, is_terminal


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Phase.PENDING, Phase.QUEUED),
        (Phase.QUEUED, Phase.SCHEDULED),
        (Phase.SCHEDULED, Phase.RUNNING),
        (Phase.SCHEDULED, Phase.QUEUED),
        (Phase.RUNNING, Phase.SUCCEEDED),
        (Phase.RUNNING, Phase.QUEUED),
        (Phase.RUNNING, Phase.FAILED),
        (Phase.QUEUED, Phase.CANCELLED),
        (Phase.PENDING, Phase.FAILED),
    ],
)
def test_allowed_transitions(current: Phase, target: Phase) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Phase.QUEUED, Phase.RUNNING),  # must be scheduled first
        (Phase.PENDING, Phase.SUCCEEDED),
        (Phase.SUCCEEDED, Phase.QUEUED),  # terminal phases never change
        (Phase.FAILED, Phase.RUNNING),
        (Phase.CANCELLED, Phase.SUCCEEDED),
        (Phase.SUCCEEDED, Phase.SUCCEEDED),  # a second result is refused
    ],
)
def test_forbidden_transitions_name_both_phases(current: Phase, target: Phase) -> None:
    with pytest.raises(ConflictError, match=f"{current.value} to {target.value}"):
        check_transition(current, target)


def test_terminal_phases() -> None:
    assert {Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED} == TERMINAL_PHASES
    assert is_terminal("Failed") and not is_terminal("Running")


def test_attempts_left_counts_the_first_run() -> None:
    assert attempts_left(0, 0) == 1
    assert attempts_left(1, 0) == 0
    assert attempts_left(1, 2) == 2
    assert attempts_left(5, 2) == 0


def test_backoff_doubles_within_jitter_and_caps() -> None:
    policy = RetryPolicy(base_seconds=1.0, cap_seconds=8.0)
    rng = random.Random(1)
    for attempts, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert min(delays) >= nominal / 2
        assert max(delays) <= nominal
        assert max(delays) - min(delays) > nominal / 4, "jitter spreads retries out"
    assert policy.delay(0) == 0.0
