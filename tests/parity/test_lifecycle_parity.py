"""The task lifecycle, scenario by scenario, on the local backend and on Kubernetes.

Every test runs twice (the ``driver`` fixture): against the local
coordinator and against InferenceTasks on the API emulator with the
operator's policy and the worker's status writes. Both must show the same
phases, reasons, attempts, history and public fields; where a message
names how the backend noticed something (a missed heartbeat, a vanished
pod) only the shared part is compared.
"""

from __future__ import annotations

import pytest
from drivers import Driver

from legacygpu.api.schemas import TaskPublic
from legacygpu.core.errors import ModelError
from legacygpu.core.lifecycle import CANCELLED_MESSAGE


def outcomes(task: TaskPublic) -> list[tuple[int, str | None]]:
    return [(a.attempt, a.outcome) for a in task.history]


async def run_one(driver: Driver, worker: str, **complete: object) -> str:
    await driver.reconcile()
    [key] = await driver.claim(worker)
    await driver.complete(key, worker, **complete)  # type: ignore[arg-type]
    return key


async def test_success(driver: Driver) -> None:
    key = await driver.submit()
    queued = await driver.get(key)
    assert (queued.phase, queued.reason, queued.attempts, queued.history) == ("Queued", "Accepted", 0, [])
    await driver.add_worker("a")
    await driver.reconcile()
    scheduled = await driver.get(key)
    assert (scheduled.phase, scheduled.reason, scheduled.message) == ("Scheduled", "Assigned", "assigned to worker a")
    assert driver.worker_of(scheduled.worker_id) == "a" and scheduled.scheduled_at is not None
    assert await driver.claim("a") == [key]
    running = await driver.get(key)
    assert (running.phase, running.attempts, running.message) == ("Running", 1, "attempt 1 running on worker a")
    assert outcomes(running) == [(1, None)]
    assert await driver.complete(key, "a", result={"top": 7}, compute_ms=12.5)
    done = await driver.get(key)
    assert (done.phase, done.reason, done.message) == ("Succeeded", "Completed", "completed on worker a")
    assert done.result == {"top": 7} and done.attempts == 1
    assert done.compute_ms == pytest.approx(12.5), "compute_ms is the model's own time on both backends"
    assert done.latency_ms is not None and done.finished_at is not None
    assert outcomes(done) == [(1, "Completed")]
    assert driver.worker_of(done.history[0].worker_id) == "a"


async def test_model_error_fails_with_the_loaders_words(driver: Driver) -> None:
    key = await driver.submit()
    await driver.add_worker("a")
    await run_one(driver, "a", error=ModelError("cannot load: truncated file"))
    failed = await driver.get(key)
    assert (failed.phase, failed.reason, failed.message) == ("Failed", "ModelError", "cannot load: truncated file")
    assert outcomes(failed) == [(1, "ModelError")] and failed.result is None


async def test_worker_error_is_retried(driver: Driver) -> None:
    key = await driver.submit(max_retries=2)
    await driver.add_worker("a")
    await run_one(driver, "a", error=RuntimeError("out of host memory"))
    retried = await driver.get(key)
    assert (retried.phase, retried.reason, retried.attempts) == ("Queued", "WorkerError", 1)
    assert retried.message is not None and retried.message.startswith(
        "worker a could not finish: RuntimeError: out of host memory; attempt 2 of 3 in"
    )
    assert retried.worker_id is None and outcomes(retried) == [(1, "WorkerError")]


async def test_lost_worker_then_retried_and_the_late_result_refused(driver: Driver) -> None:
    key = await driver.submit(max_retries=1)
    await driver.add_worker("a")
    await driver.reconcile()
    assert await driver.claim("a") == [key]
    await driver.add_worker("b")
    await driver.lose_worker("a")
    await driver.reconcile()
    lost = await driver.get(key)
    assert (lost.phase, lost.reason, lost.attempts, lost.worker_id) == ("Queued", "WorkerLost", 1, None)
    assert lost.message is not None and "; attempt 2 of 2 in " in lost.message
    assert lost.started_at is None and lost.scheduled_at is None
    assert outcomes(lost) == [(1, "WorkerLost")]
    await driver.advance(1.01)  # base 1 s: the first retry waits between 0.5 and 1 s
    await driver.reconcile()
    assert driver.worker_of((await driver.get(key)).worker_id) == "b"
    assert await driver.claim("b") == [key]
    assert not await driver.complete(key, "a", result={"from": "a"}, attempt=1), "a superseded attempt's result"
    assert (await driver.get(key)).phase == "Running"
    assert await driver.complete(key, "b", result={"from": "b"})
    done = await driver.get(key)
    assert (done.phase, done.attempts, done.result) == ("Succeeded", 2, {"from": "b"})
    assert outcomes(done) == [(1, "WorkerLost"), (2, "Completed")]
    assert [driver.worker_of(a.worker_id) for a in done.history] == ["a", "b"]


async def test_retries_exhausted(driver: Driver) -> None:
    key = await driver.submit(max_retries=0)
    await driver.add_worker("a")
    await driver.reconcile()
    await driver.claim("a")
    await driver.lose_worker("a")
    await driver.reconcile()
    failed = await driver.get(key)
    assert (failed.phase, failed.reason, failed.attempts) == ("Failed", "WorkerLost", 1)
    assert failed.message is not None and failed.message.endswith("; no retries left after 1 attempt(s)")
    assert outcomes(failed) == [(1, "WorkerLost")]


async def test_deadline(driver: Driver) -> None:
    key = await driver.submit(timeout=3)
    await driver.advance(2)
    await driver.reconcile()
    assert (await driver.get(key)).phase == "Queued"
    await driver.advance(2)
    await driver.reconcile()
    failed = await driver.get(key)
    assert (failed.phase, failed.reason) == ("Failed", "DeadlineExceeded")
    assert failed.message.startswith("did not finish within its timeout of 3 s from submission")
    assert failed.history == [] and failed.finished_at is not None


async def test_cancel_while_queued(driver: Driver) -> None:
    key = await driver.submit()
    await driver.cancel(key)
    cancelled = await driver.get(key)
    assert (cancelled.phase, cancelled.reason, cancelled.message) == ("Cancelled", "Cancelled", CANCELLED_MESSAGE)
    assert cancelled.history == [] and cancelled.attempts == 0


async def test_cancel_while_running_discards_the_result(driver: Driver) -> None:
    key = await driver.submit()
    await driver.add_worker("a")
    await driver.reconcile()
    await driver.claim("a")
    await driver.cancel(key)
    cancelled = await driver.get(key)
    assert (cancelled.phase, cancelled.reason, cancelled.attempts) == ("Cancelled", "Cancelled", 1)
    assert outcomes(cancelled) == [(1, "Cancelled")]
    assert not await driver.complete(key, "a", result={"late": True})
    after = await driver.get(key)
    assert after.phase == "Cancelled" and after.result is None


async def test_priority_then_age(driver: Driver) -> None:
    low1 = await driver.submit(priority=0)
    high = await driver.submit(priority=5)
    low2 = await driver.submit(priority=0)
    await driver.add_worker("a")
    order = [await run_one(driver, "a", result={}) for _ in range(3)]
    assert order == [high, low1, low2]


async def test_drain_gives_back_waiting_tasks_and_finishes_running_ones(driver: Driver) -> None:
    driver.capacity = 2
    busy = await driver.submit()
    await driver.add_worker("a")
    await driver.reconcile()
    assert await driver.claim("a") == [busy]
    waiting = await driver.submit()
    await driver.reconcile()  # placed, not yet started (Kubernetes: not claimed; local: not yet pushed)
    assert (await driver.get(waiting)).phase == "Scheduled"
    await driver.drain("a")
    back = await driver.get(waiting)
    assert (back.phase, back.reason, back.worker_id) == ("Queued", "WorkerDrained", None)
    assert back.message is not None and back.message.endswith("is draining; back in the queue")
    assert (await driver.get(busy)).phase == "Running"
    assert await driver.complete(busy, "a", result={})
    assert (await driver.get(busy)).phase == "Succeeded", "a draining worker still finishes its running task"
