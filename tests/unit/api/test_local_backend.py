"""The local coordinator's rules, driven directly with a fake clock (no HTTP, no processes)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest
from taskfakes import SERVING, FakeChannel, complete, connect, run_pass, take

from legacygpu.api.backends.local import LocalBackend
from legacygpu.api.schemas import (
    Completion,
    DeviceInfoPublic,
    Heartbeat,
    TaskCompletion,
    TaskCreate,
    WorkerRegister,
)
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
    connect(backend)
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
        WorkerRegister(name=name, device=DeviceInfoPublic(name="dev", vram_mib=vram), concurrency=1, stats=SERVING)
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
    assert accepted == await backend.get_task(accepted.id), "the answer is the task as stored"
    many = await backend.submit_tasks([task(priority=1, max_retries=0), task(timeout_seconds=5)])
    assert many == [await backend.get_task(t.id) for t in many]
    with pytest.raises(ValidationError, match=r"^tasks\[1\]: .*shape"):
        await backend.submit_tasks([task(), TaskCreate.model_validate(
            {"model": "m", "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]})])
    assert backend.store.phase_counts() == {"Queued": 3}, "a refused batch stores none of its tasks"


async def test_priority_first_then_fifo(backend: LocalBackend) -> None:
    low1 = await backend.submit_task(task(priority=0))
    high = await backend.submit_task(task(priority=5))
    low2 = await backend.submit_task(task(priority=0))
    wid = await worker(backend)
    order = []
    for _ in range(3):
        backend.reconcile()
        [claimed] = await take(backend, wid)
        order.append(claimed.id)
        await complete(backend, claimed.id, Completion(worker_id=wid, attempt=1, result={"ok": True}))
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
    await take(backend, first)
    second = await worker(backend, "second")
    clock.now += 6  # first stops heartbeating; second keeps beating
    await backend.heartbeat(second, Heartbeat(stats=SERVING))
    backend.reconcile()
    lost = await backend.get_task(submitted.id)
    assert lost.phase == "Queued" and lost.reason == "WorkerLost" and lost.attempts == 1
    assert (await backend.get_worker(first)).state == "lost"
    assert lost.history[0].outcome == "WorkerLost"
    backend.reconcile()
    assert (await backend.get_task(submitted.id)).phase == "Queued", "backoff: not rescheduled at once"
    clock.now += 1.01  # base 1s: the first retry waits between 0.5s and 1s
    await backend.heartbeat(second, Heartbeat(stats=SERVING))
    backend.reconcile()
    [again] = await take(backend, second)
    assert again.id == submitted.id and again.attempt == 2
    # The lost worker's late result is refused; the live attempt's result is kept, once.
    with pytest.raises(ConflictError, match="discarded"):
        await complete(backend, submitted.id, Completion(worker_id=first, attempt=1, result={"from": "first"}))
    done = await complete(backend, submitted.id, Completion(worker_id=second, attempt=2, result={"from": "second"}))
    assert done.phase == "Succeeded" and done.result == {"from": "second"} and done.attempts == 2
    repeat = await complete(backend, submitted.id, Completion(worker_id=second, attempt=2, result={"from": "x"}))
    assert repeat.result == {"from": "second"}, "a repeated completion changes nothing"
    with pytest.raises(ConflictError):
        await backend.heartbeat(first, Heartbeat(stats=SERVING))  # the lost worker must register again


async def test_retries_run_out(backend: LocalBackend, clock: Clock) -> None:
    submitted = await backend.submit_task(task(max_retries=0))
    wid = await worker(backend)
    backend.reconcile()
    await take(backend, wid)
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
        [claimed] = await take(backend, wid)
        await complete(backend,
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
    await take(backend, wid)
    assert (await backend.cancel_task(running.id)).phase == "Cancelled"
    assert (await backend.get_worker(wid)).tasks_failed == 0, "a cancelled task is not the worker's failure"
    with pytest.raises(ConflictError, match="discarded"):
        await complete(backend, running.id, Completion(worker_id=wid, attempt=1, result={}))


async def test_drain_returns_unpushed_tasks_and_stops_pushes(backend: LocalBackend) -> None:
    busy = await backend.submit_task(task())
    waiting = await backend.submit_task(task())
    wid = await worker(backend)
    backend.reconcile()
    [running] = await take(backend, wid)
    assert running.id == busy.id
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    channel.refuse.add(wid)  # the worker's next push fails: its task is placed but not delivered
    backend.settings.worker_prefetch = 2
    backend.reconcile()
    await run_pass(backend)
    await backend.heartbeat(wid, Heartbeat(stats=SERVING))
    channel.refuse.clear()
    drained = await backend.drain_worker(wid)
    assert drained.state == "draining"
    assert (await backend.get_task(waiting.id)).phase == "Queued"
    backend.reconcile()
    assert await take(backend, wid) == [], "a draining worker is pushed nothing"
    assert (await backend.get_task(waiting.id)).phase == "Queued"
    finished = await complete(backend, busy.id, Completion(worker_id=wid, attempt=1, result={}))
    assert finished.phase == "Succeeded", "a draining worker still finishes its running task"


async def test_a_pass_starts_what_it_places_and_pushes_it_in_one_request_per_worker(backend: LocalBackend) -> None:
    backend.settings.worker_prefetch = 3
    ids = [(await backend.submit_task(task())).id for _ in range(4)]
    wid = await worker(backend)
    backend.reconcile()
    await run_pass(backend)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    [push] = channel.pushes
    assert push.worker_id == wid and push.url == "http://127.0.0.1:9"
    assert [(t.id, t.attempt) for t in push.tasks] == [(i, 1) for i in ids[:3]]
    assert push.tasks[0].inputs[0]["data"] == [1, 2], "the push carries what the worker needs to run it"
    phases = [(await backend.get_task(i)).phase for i in ids]
    assert phases == ["Running"] * 3 + ["Queued"], "pushed tasks are started: the attempt counts"


async def test_a_refused_push_costs_no_attempt_and_the_worker_gets_none_until_it_beats(backend: LocalBackend) -> None:
    submitted = await backend.submit_task(task(max_retries=0))
    wid = await worker(backend)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    channel.refuse.add(wid)
    backend.reconcile()
    await run_pass(backend)
    back = await backend.get_task(submitted.id)
    assert back.phase == "Queued" and back.attempts == 0 and back.history == [], "never delivered: not an attempt"
    assert back.reason == "WorkerLost" and "not delivered" in (back.message or "")
    channel.refuse.clear()
    backend.reconcile()
    assert await take(backend, wid) == [], "an unreachable worker gets nothing until it is heard from"
    await backend.heartbeat(wid, Heartbeat(stats=SERVING))
    backend.reconcile()
    [pushed] = await take(backend, wid)
    assert pushed.id == submitted.id and pushed.attempt == 1


async def test_a_batch_of_outcomes_applies_together_and_a_stale_one_is_refused_alone(backend: LocalBackend) -> None:
    backend.settings.worker_prefetch = 3
    first, stale, last = [(await backend.submit_task(task())).id for _ in range(3)]
    wid = await worker(backend)
    backend.reconcile()
    assert len(await take(backend, wid)) == 3
    await backend.cancel_task(stale)  # its outcome, when it comes, is of an attempt given up on
    batch = [TaskCompletion(task_id=i, worker_id=wid, attempt=1, result={"n": n}) for n, i in
             enumerate((first, stale, last))]
    answers = await backend.complete_tasks(wid, batch)
    assert [(a.task_id, a.status) for a in answers] == [(first, "applied"), (stale, "refused"), (last, "applied")]
    assert "discarded" in answers[1].detail
    assert (await backend.get_task(first)).result == {"n": 0} and (await backend.get_task(last)).result == {"n": 2}
    assert (await backend.get_task(stale)).phase == "Cancelled"
    again = await backend.complete_tasks(wid, batch)
    assert [a.status for a in again] == ["repeated", "refused", "repeated"], "a resent batch changes nothing"


async def test_a_batch_that_fails_midway_keeps_none_of_its_outcomes(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.settings.worker_prefetch = 2
    ids = [(await backend.submit_task(task())).id for _ in range(2)]
    wid = await worker(backend)
    backend.reconcile()
    assert len(await take(backend, wid)) == 2
    real, calls = backend.store.write_task, []

    def failing_second(*args: object) -> bool:
        calls.append(args)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(backend.store, "write_task", failing_second)
    batch = [TaskCompletion(task_id=i, worker_id=wid, attempt=1, result={}) for i in ids]
    with pytest.raises(sqlite3.OperationalError):
        await backend.complete_tasks(wid, batch)
    assert [(await backend.get_task(i)).phase for i in ids] == ["Running", "Running"], "all or nothing"
    monkeypatch.undo()
    assert [a.status for a in await backend.complete_tasks(wid, batch)] == ["applied", "applied"]


async def test_a_push_the_worker_never_got_goes_back_once_its_heartbeat_says_so(
    backend: LocalBackend, clock: Clock
) -> None:
    backend.settings.worker_prefetch = 2
    kept, lost = [(await backend.submit_task(task())).id for _ in range(2)]
    wid = await worker(backend)
    backend.reconcile()
    backend.start_scheduled()  # started, but say the facade stopped before the push went out
    await backend.heartbeat(wid, Heartbeat(stats=SERVING, holding=[kept]))
    assert (await backend.get_task(lost)).phase == "Running", "a push may still be on its way"
    clock.now += 20
    await backend.heartbeat(wid, Heartbeat(stats=SERVING, holding=[kept]))
    back = await backend.get_task(lost)
    assert back.phase == "Queued" and back.attempts == 0, "never delivered: back in the queue, no attempt spent"
    assert (await backend.get_task(kept)).phase == "Running"
    await backend.heartbeat(wid, Heartbeat(stats=SERVING))  # a heartbeat without the list checks nothing
    assert (await backend.get_task(kept)).phase == "Running"


async def test_a_push_answered_with_its_outcome_finishes_the_task_with_no_report_of_its_own(
    backend: LocalBackend,
) -> None:
    submitted = await backend.submit_task(task())
    wid = await worker(backend)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    channel.run_now = lambda d: [TaskCompletion(task_id=t.id, worker_id=d.worker_id, attempt=t.attempt,
                                                result={"ran": "at once"}, compute_ms=0.5) for t in d.tasks]
    backend.reconcile()
    await run_pass(backend)
    done = await backend.get_task(submitted.id)
    assert done.phase == "Succeeded" and done.result == {"ran": "at once"} and done.attempts == 1
    assert channel.take(wid) == [], "nothing left for the worker to report"


async def test_an_outcome_answered_with_a_push_that_cannot_be_applied_leaves_the_task_to_the_heartbeat_check(
    backend: LocalBackend, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = await backend.submit_task(task())
    wid = await worker(backend)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    channel.run_now = lambda d: [TaskCompletion(task_id=t.id, worker_id=d.worker_id, attempt=t.attempt, result={})
                                 for t in d.tasks]

    def locked(*args: object) -> object:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(backend, "_complete_tasks", locked)
    backend.reconcile()
    await run_pass(backend)  # the failure is logged, not raised into the push
    monkeypatch.undo()
    assert (await backend.get_task(submitted.id)).phase == "Running"
    clock.now += 20
    await backend.heartbeat(wid, Heartbeat(stats=SERVING, holding=[]))  # the worker ran it: it holds it no more
    back = await backend.get_task(submitted.id)
    assert back.phase == "Queued" and back.attempts == 0, "its outcome was lost on the way: it runs again"
    assert back.message.startswith("worker w does not hold it: the push did not arrive, or its answer")


async def test_restart_keeps_every_task(tmp_path: Path, clock: Clock) -> None:
    first = make_backend(tmp_path, clock)
    ids = [(await first.submit_task(task())).id for _ in range(5)]
    wid = await worker(first)
    first.reconcile()
    [running] = await take(first, wid)
    first.store.close()
    clock.now += 60  # the coordinator was down for a minute
    second = LocalBackend(first.settings, clock=clock)
    await second.start()
    await second.stop()
    rows, count = await second.list_tasks(limit=10)
    assert count == 5 and {t.id for t in rows} == set(ids)
    assert (await second.get_worker(wid)).state == "active", "downtime is not a missed heartbeat"
    done = await complete(second, running.id, Completion(worker_id=wid, attempt=1, result={"after": "restart"}))
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


async def test_tasks_placed_before_a_restart_are_pushed_by_the_restarted_facade(tmp_path: Path, clock: Clock) -> None:
    first = make_backend(tmp_path, clock)
    placed = await first.submit_task(task())
    wid = await worker(first)
    first.reconcile()  # placed on the worker; the facade stops before it starts and pushes it
    assert (await first.get_task(placed.id)).phase == "Scheduled"
    first.store.close()
    second = LocalBackend(first.settings, clock=clock)
    channel = connect(second)
    await second.start()  # its background loop: a pass, then the delivery of whatever is placed
    try:
        for _ in range(100):
            if channel.pushes:
                break
            await asyncio.sleep(0.02)
    finally:
        await second.stop()
    [push] = channel.pushes
    assert push.worker_id == wid and [(t.id, t.attempt) for t in push.tasks] == [(placed.id, 1)]
    assert (await second.get_task(placed.id)).phase == "Running"


async def test_a_restarted_facade_starts_and_pushes_what_the_old_one_placed_but_never_started(
    clock: Clock, backend: LocalBackend
) -> None:
    wid = await worker(backend)
    placed = await backend.submit_task(task())
    backend.reconcile()  # placed (Scheduled); the facade stops before the pass starts and pushes it
    assert (await backend.get_task(placed.id)).phase == "Scheduled"
    restarted = LocalBackend(backend.settings, clock=clock, rng=random.Random(0))
    connect(restarted)
    [pushed] = await take(restarted, wid)
    assert pushed.id == placed.id and (await restarted.get_task(placed.id)).phase == "Running"
