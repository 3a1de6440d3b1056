"""The shared lifecycle moves, the outcome classifier, WorkerStats and the placement plan (pure)."""

from __future__ import annotations

import random

import pytest

from legacygpu.core import lifecycle
from legacygpu.core.errors import ConflictError, ModelError, UnknownModelError, ValidationError
from legacygpu.core.lifecycle import TaskRecord
from legacygpu.core.scheduling import Requirements, WorkerInfo, WorkerStats, make_strategy
from legacygpu.core.tasks import Phase, Reason, RetryPolicy

POLICY = RetryPolicy(base_seconds=1.0, cap_seconds=8.0)


def running(max_retries: int = 1) -> TaskRecord:
    task = lifecycle.admit(TaskRecord(id="t", model="m", created_at=100.0, max_retries=max_retries), now=100.0)
    task = lifecycle.assign(task, worker_id="w1", worker_name="one", now=101.0)
    return lifecycle.start(task, worker_id="w1", worker_name="one", now=102.0)


def test_a_run_counts_an_attempt_and_opens_history() -> None:
    task = running()
    assert (task.phase, task.attempts, task.message) == (Phase.RUNNING, 1, "attempt 1 running on worker one")
    assert [(a.attempt, a.worker_id, a.outcome) for a in task.history] == [(1, "w1", None)]


def test_requeue_closes_the_attempt_then_retries_run_out() -> None:
    again = lifecycle.requeue_or_fail(running(), reason=Reason.WORKER_LOST, why="gone", now=110.0, policy=POLICY,
                                      rng=random.Random(0))
    assert (again.phase, again.worker_id, again.started_at) == (Phase.QUEUED, None, None)
    assert again.not_before is not None and 110.5 <= again.not_before <= 111.0
    assert again.history[0].outcome == "WorkerLost" and again.message.startswith("gone; attempt 2 of 2 in ")
    last = lifecycle.start(lifecycle.assign(again, worker_id="w2", now=112.0), worker_id="w2", now=113.0)
    failed = lifecycle.requeue_or_fail(last, reason=Reason.WORKER_LOST, why="gone", now=120.0, policy=POLICY)
    assert (failed.phase, failed.message) == (Phase.FAILED, "gone; no retries left after 2 attempt(s)")
    assert failed.latency_ms == pytest.approx(20_000) and [a.outcome for a in failed.history] == ["WorkerLost"] * 2


def test_an_undelivered_start_is_undone_without_spending_an_attempt() -> None:
    first = running()
    again = lifecycle.requeue_or_fail(first, reason=Reason.WORKER_LOST, why="gone", now=110.0, policy=POLICY)
    second = lifecycle.start(lifecycle.assign(again, worker_id="w2", now=112.0), worker_id="w2", now=113.0)
    back = lifecycle.undeliver(second, reason=Reason.WORKER_LOST, why="not delivered: refused")
    assert (back.phase, back.attempts, back.worker_id, back.scheduled_at) == (Phase.QUEUED, 1, None, None)
    assert back.history == again.history and back.started_at == 102.0
    assert back.message == "not delivered: refused; back in the queue" and back.reason == "WorkerLost"
    never = lifecycle.undeliver(first, reason=Reason.WORKER_LOST, why="x")
    assert (never.attempts, never.history, never.started_at) == (0, (), None)
    with pytest.raises(ConflictError):  # it ran and reported: nothing to undo
        lifecycle.undeliver(lifecycle.report(first, lifecycle.classify(None, worker="one"), now=105.0,
                                             policy=POLICY), reason=Reason.WORKER_LOST, why="x")


def test_reports_are_checked_against_the_current_attempt() -> None:
    task = running()
    assert lifecycle.check_report(task, worker_id="w1", attempt=1)
    with pytest.raises(ConflictError, match="discarded"):
        lifecycle.check_report(task, worker_id="w2", attempt=1)
    done = lifecycle.report(task, lifecycle.classify(None, worker="one"), now=103.0, policy=POLICY, result={"a": 1})
    assert (done.phase, done.result, done.message) == (Phase.SUCCEEDED, {"a": 1}, "completed on worker one")
    assert lifecycle.check_report(done, worker_id="w1", attempt=1) is False, "a repeat is answered, not applied"
    with pytest.raises(ConflictError, match="already Succeeded"):
        lifecycle.cancel(done, now=104.0)


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (UnknownModelError("no such model"), Reason.UNKNOWN_MODEL, False),
        (ValidationError("bad shape"), Reason.INVALID_INPUT, False),
        (ModelError("truncated"), Reason.MODEL_ERROR, False),
        (OSError("disk"), Reason.WORKER_ERROR, True),
    ],
)
def test_one_classifier_for_both_workers(error: Exception, reason: Reason, retryable: bool) -> None:
    outcome = lifecycle.classify(error, worker="pod-1")
    assert (outcome.reason, outcome.retryable, outcome.succeeded) == (reason, retryable, False)
    assert outcome.phase == (Phase.QUEUED if retryable else Phase.FAILED)
    if retryable:
        assert outcome.message == "worker pod-1 could not finish: OSError: disk"


def test_deadline_counts_from_creation() -> None:
    task = TaskRecord(id="t", model="m", created_at=100.0, timeout_seconds=3)
    assert lifecycle.deadline(task) == 103.0
    expired = lifecycle.expire(lifecycle.admit(task, now=100.0), now=103.5)
    assert expired.reason == "DeadlineExceeded" and "timeoutSeconds" not in expired.message
    assert "within its timeout of 3 s" in expired.message and "--timeout" in expired.message


def test_worker_stats_one_type_two_spellings() -> None:
    stats = WorkerStats().observe(ok=True, latency_ms=10.0).observe(ok=True, latency_ms=20.0).observe(
        ok=False, latency_ms=None
    )
    assert (stats.completed, stats.failed, stats.recent_latency_ms) == (2, 1, pytest.approx(13.0))
    stats = WorkerStats(completed=2, failed=1, recent_latency_ms=13.0, models=("digits",))
    assert WorkerStats.from_local(stats.to_local()) == stats
    assert WorkerStats.from_annotation(stats.to_annotation()) == stats
    info = stats.worker_info("w", assigned=0, capacity=1)
    assert info.warm_models == {"digits"} and not info.models, "loaded models never restrict where a task may go"


def test_workers_with_the_model_loaded_win_ties() -> None:
    cold = WorkerInfo(id="a")
    warm = WorkerStats(models=("digits",)).worker_info("b", assigned=0, capacity=1)
    for name in ("least-loaded", "capability-match", "adaptive"):
        assert make_strategy(name).pick(Requirements(model="digits"), [cold, warm]) == warm, name
        assert make_strategy(name).pick(Requirements(model="other"), [cold, warm]) == cold, name


def test_plan_goes_by_priority_then_age_and_stops_when_nobody_has_room() -> None:
    tasks = [TaskRecord(id=i, model="m", created_at=t, priority=p) for i, t, p in
             [("old-low", 1, 0), ("new-high", 9, 5), ("old-high", 2, 5), ("newest", 10, 0)]]
    workers = [WorkerInfo(id="a", capacity=1), WorkerInfo(id="b", capacity=2, assigned=1)]
    plan = lifecycle.plan_assignments(tasks, workers, make_strategy("least-loaded"))
    assert [t.id for t, _ in plan] == ["old-high", "new-high"]
