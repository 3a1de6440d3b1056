"""The local coordinator's rules, driven directly with a fake clock (no HTTP, no processes)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from legacygpu.api.backends.local import LocalBackend
from legacygpu.api.schemas import Completion, DeviceInfoPublic, Heartbeat, TaskCreate, WorkerRegister
from legacygpu.core.config import Settings
from legacygpu.core.errors import ConflictError, NotFoundError, UnknownModelError, ValidationError
from legacygpu.core.modelcards import ModelCard, ModelRepository, TensorSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_backend(tmp_path: Path, clock: Clock, **settings: object) -> LocalBackend:
    defaults: dict[str, object] = {
        "data_dir": tmp_path,
        "heartbeat_timeout_seconds": 5.0,
        "retry_base_seconds": 1.0,
        "retry_cap_seconds": 4.0,
        "worker_prefetch": 1,
    }
    backend = LocalBackend(Settings(**{**defaults, **settings}), clock=clock, rng=random.Random(0))  # type: ignore[arg-type]
    onnx = tmp_path / "dummy.onnx"
    onnx.write_bytes(b"not used by the coordinator")
    card = ModelCard(name="m", inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])])
    ModelRepository(tmp_path / "models").add(card, onnx)
    return backend


@pytest.fixture
def backend(tmp_path: Path, clock: Clock) -> LocalBackend:
    return make_backend(tmp_path, clock)


def task(priority: int = 0, **kw: object) -> TaskCreate:
    return TaskCreate.model_validate(
        {"model": "m", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
         "priority": priority, **kw}
    )


async def worker(backend: LocalBackend, name: str = "w", vram: int = 0) -> str:
    reply = await backend.register_worker(
        WorkerRegister(name=name, device=DeviceInfoPublic(name="dev", vram_mib=vram), concurrency=1)
    )
    return reply.id


async def test_submit_checks_model_and_inputs(backend: LocalBackend) -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'nope'.*models in the repository: m"):
        await backend.submit_task(task().model_copy(update={"model": "nope"}))
    with pytest.raises(ValidationError, match="shape"):
        await backend.submit_task(
            TaskCreate.model_validate({"model": "m", "inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                                                                 "data": [1, 2, 3]}]})
        )
    accepted = await backend.submit_task(task())
    assert accepted.phase == "Queued" and accepted.reason == "Accepted"


async def test_priority_first_then_fifo(backend: LocalBackend) -> None:
    low1 = await backend.submit_task(task(priority=0))
    high = await backend.submit_task(task(priority=5))
    low2 = await backend.submit_task(task(priority=0))
    wid = await worker(backend)
    order = []
    for _ in range(3):
        backend.reconcile()
        [claimed] = await backend.claim_tasks(wid, 1, 0)
        order.append(claimed.id)
        await backend.complete_task(claimed.id, Completion(worker_id=wid, attempt=1, result={"ok": True}))
    assert order == [high.id, low1.id, low2.id]


async def test_scheduling_respects_capacity_and_requirements(backend: LocalBackend) -> None:
    small = await worker(backend, "small", vram=2048)
    big = await worker(backend, "big", vram=8192)
    needs_big = await backend.submit_task(task(requirements={"min_vram_mib": 4096}))
    backend.reconcile()
    assert (await backend.get_task(needs_big.id)).worker_id == big
    # big is now full (prefetch 1); another big task must wait even though small is idle.
    waits = await backend.submit_task(task(requirements={"min_vram_mib": 4096}))
    any_task = await backend.submit_task(task())
    backend.reconcile()
    assert (await backend.get_task(waits.id)).phase == "Queued"
    assert (await backend.get_task(any_task.id)).worker_id == small


async def test_lost_worker_tasks_are_retried_with_backoff_elsewhere(backend: LocalBackend, clock: Clock) -> None:
    submitted = await backend.submit_task(task(max_retries=1))
    first = await worker(backend, "first")
    backend.reconcile()
    await backend.claim_tasks(first, 1, 0)
    second = await worker(backend, "second")
    clock.now += 6  # first stops heartbeating; second keeps beating
    await backend.heartbeat(second, Heartbeat())
    backend.reconcile()
    lost = await backend.get_task(submitted.id)
    assert lost.phase == "Queued" and lost.reason == "WorkerLost" and lost.attempts == 1
    assert (await backend.get_worker(first)).state == "lost"
    assert lost.history[0].outcome == "WorkerLost"
    backend.reconcile()
    assert (await backend.get_task(submitted.id)).phase == "Queued", "backoff: not rescheduled at once"
    clock.now += 1.01  # base 1s: the first retry waits between 0.5s and 1s
    await backend.heartbeat(second, Heartbeat())
    backend.reconcile()
    [again] = await backend.claim_tasks(second, 1, 0)
    assert again.id == submitted.id and again.attempt == 2
    # The lost worker's late result is refused; the live attempt's result is kept, once.
    with pytest.raises(ConflictError, match="discarded"):
        await backend.complete_task(submitted.id, Completion(worker_id=first, attempt=1, result={"from": "first"}))
    done = await backend.complete_task(submitted.id, Completion(worker_id=second, attempt=2, result={"from": "second"}))
    assert done.phase == "Succeeded" and done.result == {"from": "second"} and done.attempts == 2
    repeat = await backend.complete_task(submitted.id, Completion(worker_id=second, attempt=2, result={"from": "x"}))
    assert repeat.result == {"from": "second"}, "a repeated completion changes nothing"
    with pytest.raises(ConflictError):
        await backend.heartbeat(first, Heartbeat())  # the lost worker must register again


async def test_retries_run_out(backend: LocalBackend, clock: Clock) -> None:
    submitted = await backend.submit_task(task(max_retries=0))
    wid = await worker(backend)
    backend.reconcile()
    await backend.claim_tasks(wid, 1, 0)
    clock.now += 6
    backend.reconcile()
    failed = await backend.get_task(submitted.id)
    assert failed.phase == "Failed" and failed.reason == "WorkerLost"
    assert "no retries left after 1 attempt" in (failed.message or "")


async def test_retryable_error_retries_and_permanent_error_fails(backend: LocalBackend, clock: Clock) -> None:
    wid = await worker(backend)

    async def run_once(error: dict[str, object]) -> str:
        submitted = await backend.submit_task(task(max_retries=2))
        backend.reconcile()
        [claimed] = await backend.claim_tasks(wid, 1, 0)
        await backend.complete_task(
            claimed.id, Completion.model_validate({"worker_id": wid, "attempt": 1, "error": error})
        )
        return submitted.id

    flaky = await run_once({"reason": "WorkerError", "message": "out of host memory", "retryable": True})
    retried = await backend.get_task(flaky)
    assert retried.phase == "Queued" and retried.reason == "WorkerError" and retried.attempts == 1
    assert "attempt 2 of 3" in (retried.message or "")
    await backend.cancel_task(flaky)
    broken = await run_once({"reason": "ModelError", "message": "cannot load: truncated file"})
    failed = await backend.get_task(broken)
    assert failed.phase == "Failed" and failed.reason == "ModelError"
    assert failed.message == "cannot load: truncated file", "the loader's words reach the user"


async def test_deadline_fails_the_task(backend: LocalBackend, clock: Clock) -> None:
    submitted = await backend.submit_task(task(timeout_seconds=3))
    clock.now += 2
    backend.reconcile()
    assert (await backend.get_task(submitted.id)).phase == "Queued"
    clock.now += 2
    backend.reconcile()
    failed = await backend.get_task(submitted.id)
    assert failed.phase == "Failed" and failed.reason == "DeadlineExceeded"
    assert "timeout of 3 s" in (failed.message or "") and "timeoutSeconds" not in (failed.message or "")


async def test_cancel(backend: LocalBackend) -> None:
    submitted = await backend.submit_task(task())
    cancelled = await backend.cancel_task(submitted.id)
    assert cancelled.phase == "Cancelled"
    with pytest.raises(ConflictError, match="already Cancelled"):
        await backend.cancel_task(submitted.id)
    with pytest.raises(NotFoundError):
        await backend.cancel_task("task-missing")
    running = await backend.submit_task(task())
    wid = await worker(backend)
    backend.reconcile()
    await backend.claim_tasks(wid, 1, 0)
    assert (await backend.cancel_task(running.id)).phase == "Cancelled"
    assert (await backend.get_worker(wid)).tasks_failed == 0, "a cancelled task is not the worker's failure"
    with pytest.raises(ConflictError, match="discarded"):
        await backend.complete_task(running.id, Completion(worker_id=wid, attempt=1, result={}))


async def test_drain_returns_unstarted_tasks_and_stops_claims(backend: LocalBackend) -> None:
    busy = await backend.submit_task(task())
    waiting = await backend.submit_task(task())
    wid = await worker(backend)
    backend.reconcile()
    [running] = await backend.claim_tasks(wid, 1, 0)
    assert running.id == busy.id
    backend.settings.worker_prefetch = 2
    backend.reconcile()
    assert (await backend.get_task(waiting.id)).phase == "Scheduled"
    drained = await backend.drain_worker(wid)
    assert drained.state == "draining"
    assert (await backend.get_task(waiting.id)).phase == "Queued"
    assert await backend.claim_tasks(wid, 1, 0) == []
    finished = await backend.complete_task(busy.id, Completion(worker_id=wid, attempt=1, result={}))
    assert finished.phase == "Succeeded", "a draining worker still finishes its running task"


async def test_restart_keeps_every_task(tmp_path: Path, clock: Clock) -> None:
    first = make_backend(tmp_path, clock)
    ids = [(await first.submit_task(task())).id for _ in range(5)]
    wid = await worker(first)
    first.reconcile()
    [running] = await first.claim_tasks(wid, 1, 0)
    first.store.close()
    clock.now += 60  # the coordinator was down for a minute
    second = LocalBackend(first.settings, clock=clock)
    await second.start()
    await second.stop()
    rows, count = await second.list_tasks(limit=10)
    assert count == 5 and {t.id for t in rows} == set(ids)
    assert (await second.get_worker(wid)).state == "active", "downtime is not a missed heartbeat"
    done = await second.complete_task(running.id, Completion(worker_id=wid, attempt=1, result={"after": "restart"}))
    assert done.phase == "Succeeded"


async def test_stats_sent_at_registration_are_there_before_any_heartbeat(backend: LocalBackend) -> None:
    reply = await backend.register_worker(
        WorkerRegister(name="w", stats={"memory_rss_bytes": 123_456_789, "models_loaded": []})
    )
    worker = await backend.get_worker(reply.id)
    assert worker.stats["memory_rss_bytes"] == 123_456_789 and worker.stats["running"] == 0
    await backend.heartbeat(reply.id, Heartbeat(running=1, stats={"memory_rss_bytes": 5, "models_loaded": ["digits"]}))
    beat = {"memory_rss_bytes": 5, "models_loaded": ["digits"], "running": 1}
    assert (await backend.get_worker(reply.id)).stats == beat  # a heartbeat replaces them
