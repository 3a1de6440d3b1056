"""What one coordinator pass costs: indexed scans, a queue read bounded by free slots, coalesced wake-ups.

Driven directly with a fake clock (no HTTP, no processes), like test_local_backend.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from taskfakes import SERVING, FakeChannel, complete, connect, take

from legacygpu.api.backends.local import LocalBackend, store
from legacygpu.api.backends.local import backend as local_backend
from legacygpu.api.backends.local.channel import Delivery
from legacygpu.api.schemas import (
    Completion,
    DeviceInfoPublic,
    TaskCompletion,
    TaskCreate,
    TaskError,
    WorkerRegister,
)
from legacygpu.core.config import Settings
from legacygpu.core.errors import NotFoundError
from legacygpu.core.modelcards import ModelCard, ModelRepository, TensorSpec

NOW = 1_000_000.0


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    settings = Settings(data_dir=tmp_path, worker_prefetch=1)  # type: ignore[call-arg]
    backend = LocalBackend(settings, clock=lambda: NOW, rng=random.Random(0))
    onnx = tmp_path / "dummy.onnx"
    onnx.write_bytes(b"not used by the coordinator")
    ModelRepository(tmp_path / "models").add(ModelCard(name="m", inputs=[TensorSpec(name="x", shape=[-1, 2])]), onnx)
    connect(backend)
    return backend


@pytest.fixture
def rows_read(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many queued rows each read of the queue returned (and so decoded)."""
    seen: list[int] = []
    real = backend.store.runnable_tasks

    def counting(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        rows = real(*args, **kwargs)
        seen.append(len(rows))
        return rows

    monkeypatch.setattr(backend.store, "runnable_tasks", counting)
    return seen


def task(**kw: object) -> TaskCreate:
    return TaskCreate.model_validate(
        {"model": "m", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}], **kw}
    )


async def worker(backend: LocalBackend, name: str = "w", vram: int = 0) -> str:
    reply = await backend.register_worker(
        WorkerRegister(name=name, device=DeviceInfoPublic(name="dev", vram_mib=vram), concurrency=1, stats=SERVING)
    )
    return reply.id


async def test_a_pass_reads_no_more_queued_rows_than_it_has_free_slots(
    backend: LocalBackend, rows_read: list[int]
) -> None:
    for _ in range(40):
        await backend.submit_task(task())
    await worker(backend)  # capacity 1
    backend.reconcile()
    assert rows_read == [1]
    assert backend.store.phase_counts() == {"Queued": 39, "Scheduled": 1}
    backend.reconcile()  # full: the queue is not read at all
    assert rows_read == [1]


async def test_the_pass_looks_past_tasks_no_worker_can_take(backend: LocalBackend, rows_read: list[int]) -> None:
    blocked = [await backend.submit_task(task(requirements={"min_vram_mib": 4096})) for _ in range(3)]
    placeable = await backend.submit_task(task())
    await worker(backend, vram=1024)
    backend.reconcile()
    assert (await backend.get_task(placeable.id)).phase == "Scheduled"
    assert [(await backend.get_task(t.id)).phase for t in blocked] == ["Queued"] * 3
    assert sum(rows_read) == 4, "one page of one free slot at a time, until the slot is filled"


async def test_an_idle_coordinator_passes_at_once_and_changes_queued_meanwhile_cost_one_pass(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.settings.worker_prefetch = backend.settings.worker_prefetch_max = 8
    wid = await worker(backend)
    passes: list[int] = []  # tasks each pass started

    def count(deliveries: list[Delivery]) -> None:
        passes.append(sum(len(d.tasks) for d in deliveries))

    async with passes_recorded(backend, monkeypatch, count) as channel:
        assert passes == [0], "the first pass, at start"
        lone = await backend.submit_task(task())
        await until(lambda: channel.pushes)
        assert passes == [0, 1] and [t.id for t in channel.take(wid)] == [lone.id], "placed and pushed at once"
        gate = threading.Event()
        backend._db_thread.submit(gate.wait)  # the database thread is busy: these eight queue behind it
        queued = [asyncio.ensure_future(backend.submit_task(task())) for _ in range(8)]
        await asyncio.sleep(0.05)
        gate.set()
        submitted = await asyncio.gather(*queued)
        await until(lambda: len(channel.pushes) == 2)
        await asyncio.sleep(0.1)  # time for any further pass to show
        assert passes == [0, 1, 7], "eight submissions queued meanwhile: one pass (seven slots were free)"
        pushed = channel.take(wid)
        batch = [TaskCompletion(task_id=t.id, worker_id=wid, attempt=1, result={}) for t in pushed]
        await backend.complete_tasks(wid, batch)
        await until(lambda: len(passes) == 4)
        await asyncio.sleep(0.1)
        assert passes == [0, 1, 7, 1], "a batch of seven outcomes: one pass, which places the last task"
        done = {(await backend.get_task(t.id)).phase for t in submitted}
        assert done == {"Succeeded", "Running"}


async def test_an_idle_coordinator_places_and_pushes_a_task_before_answering_its_submitter(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else waits for the database thread: the pass a submission asks for runs in the same call, so
    the event loop is woken once and sends the push before the answer (not beside a pass in progress)."""
    wid = await worker(backend)
    order: list[str] = []

    def slow(deliveries: list[Delivery]) -> None:
        time.sleep(0.05)  # long enough that an answer sent before the pass ended would come first
        order.append("pass")
        order.extend(f"pass placed {t.id}" for d in deliveries for t in d.tasks)

    async with passes_recorded(backend, monkeypatch, slow) as channel:
        assert order == ["pass"], "the first pass, at start"
        lone = await backend.submit_task(task())
        order.append(f"answered {lone.id}")
        assert order == ["pass", "pass", f"pass placed {lone.id}", f"answered {lone.id}"]
        await until(lambda: channel.pushes)
        assert [t.id for t in channel.take(wid)] == [lone.id]


@contextlib.asynccontextmanager
async def passes_recorded(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch,
                          record: Callable[[list[Delivery]], None]) -> AsyncIterator[FakeChannel]:
    """``backend`` started with only changes asking for passes, each pass's deliveries handed to ``record``
    before the pass returns them; yields its channel once the first pass (at start) has run, stops it after."""
    monkeypatch.setattr(local_backend, "_PASS_INTERVAL_SECONDS", 3600.0)
    real, passes = backend._pass, [0]

    def recording() -> list[Delivery]:
        deliveries = real()
        record(deliveries)
        passes[0] += 1
        return deliveries

    monkeypatch.setattr(backend, "_pass", recording)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    await backend.start()
    try:
        await until(lambda: passes[0])
        yield channel
    finally:
        await backend.stop()


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Wait for ``condition()`` to hold (the coordinator's passes run on its database thread)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_a_backend_stopped_with_a_pass_queued_passes_again_once_restarted(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_backend, "_PASS_INTERVAL_SECONDS", 3600.0)  # only changes ask for passes here
    wid = await worker(backend)
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    await backend.start()
    gate = threading.Event()
    backend._db_thread.submit(gate.wait)  # the database thread is busy: the next pass waits queued behind it
    backend._poke()
    await backend.stop()  # drops the queued pass
    gate.set()
    await backend.start()
    try:
        lone = await backend.submit_task(task())
        await until(lambda: channel.pushes)
        assert [t.id for t in channel.take(wid)] == [lone.id], "the restarted coordinator places and pushes"
    finally:
        await backend.stop()


@pytest.mark.parametrize(("index", "sql", "params"), [
    ("tasks_deadline", store.EXPIRED_SQL, [NOW]),
    ("tasks_phase", store.RUNNABLE_SQL, [NOW, 10, 0]),
])
def test_the_pass_scans_use_indexes(backend: LocalBackend, index: str, sql: str, params: list[Any]) -> None:
    plan = " ".join(backend.store.query_plan(sql, params))
    assert f"INDEX {index}" in plan, plan


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def retaining(tmp_path: Path, clock: Clock, retention: float) -> LocalBackend:
    settings = Settings(data_dir=tmp_path, task_retention_seconds=retention)  # type: ignore[call-arg]
    backend = LocalBackend(settings, clock=clock, rng=random.Random(0))
    onnx = tmp_path / "dummy.onnx"
    onnx.write_bytes(b"not used by the coordinator")
    ModelRepository(tmp_path / "models").add(ModelCard(name="m", inputs=[TensorSpec(name="x", shape=[-1, 2])]), onnx)
    connect(backend)
    return backend


async def finished_task(backend: LocalBackend) -> str:
    wid = await worker(backend)
    submitted = await backend.submit_task(task())
    backend.reconcile()
    [claimed] = await take(backend, wid)
    await complete(backend, claimed.id, Completion(worker_id=wid, attempt=1, result={"top": 7}))
    return submitted.id


async def test_finished_tasks_are_kept_with_results_for_the_retention_period_then_deleted(tmp_path: Path) -> None:
    clock = Clock()
    backend = retaining(tmp_path, clock, retention=600)
    done = await finished_task(backend)
    waiting = await backend.submit_task(task(timeout_seconds=10_000, requirements={"min_vram_mib": 1}))
    clock.now += 599
    backend.reconcile()
    assert (await backend.get_task(done)).result == {"top": 7}, "kept, result included, until the period ends"
    clock.now += 61 + 1  # past the retention period and the once-a-minute check
    backend.reconcile()
    with pytest.raises(NotFoundError):
        await backend.get_task(done)
    assert (await backend.get_task(waiting.id)).phase == "Queued", "an unfinished task is never pruned"


async def test_retention_zero_keeps_finished_tasks_forever(tmp_path: Path) -> None:
    clock = Clock()
    backend = retaining(tmp_path, clock, retention=0)
    done = await finished_task(backend)
    clock.now += 10 * 365 * 86400
    backend.reconcile()
    assert (await backend.get_task(done)).phase == "Succeeded"


def test_pruning_uses_the_finished_index(backend: LocalBackend) -> None:
    plan = " ".join(backend.store.query_plan(store.PRUNE_SQL, [NOW, 10]))
    assert "INDEX tasks_finished" in plan, plan


async def test_the_loops_pass_places_and_starts_in_one_transaction_listing_the_workers_once(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.settings.worker_prefetch = 2
    wid = await worker(backend)
    ids = [(await backend.submit_task(task())).id for _ in range(3)]
    listed: list[object] = []
    real = backend.store.list_workers

    def counting(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        listed.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(backend.store, "list_workers", counting)
    statements: list[str] = []
    backend.store._db.set_trace_callback(statements.append)
    [delivery] = backend._pass()
    backend.store._db.set_trace_callback(None)
    assert delivery.worker_id == wid and [t.id for t in delivery.tasks] == ids[:2]
    assert [(await backend.get_task(i)).phase for i in ids] == ["Running", "Running", "Queued"]
    assert len(listed) == 1, "one pass lists the workers once"
    assert statements.count("COMMIT") == 1, "placing and starting: one transaction"
    assert backend._pass() == [], "nothing new placed: nothing to send"


async def test_a_worker_of_short_tasks_is_given_more_to_hold_and_one_of_long_tasks_is_not(
    backend: LocalBackend,
) -> None:
    backend.settings.worker_prefetch, backend.settings.worker_prefetch_max = 1, 8
    fast, slow = await worker(backend, "fast"), await worker(backend, "slow")
    ids = [(await backend.submit_task(task())).id for _ in range(20)]
    [first, second] = backend._pass()
    assert [len(d.tasks) for d in (first, second)] == [1, 1], "model time unknown: the floor"
    done = {d.worker_id: d.tasks[0] for d in (first, second)}
    await backend.complete_tasks(fast, [TaskCompletion(task_id=done[fast].id, worker_id=fast, attempt=1, result={},
                                                       compute_ms=0.5)])
    await backend.complete_tasks(slow, [TaskCompletion(task_id=done[slow].id, worker_id=slow, attempt=1, result={},
                                                       compute_ms=2000.0)])
    held = {d.worker_id: len(d.tasks) for d in backend._pass()}
    assert held == {fast: 8, slow: 1}, "0.5 ms tasks: up to the cap; two-second tasks: the floor"
    assert backend.store.phase_counts()["Queued"] == len(ids) - 2 - 9


async def test_a_worker_that_ran_a_short_model_is_not_given_a_short_models_count_of_another_model(
    backend: LocalBackend, tmp_path: Path
) -> None:
    backend.settings.worker_prefetch, backend.settings.worker_prefetch_max = 1, 8
    onnx = tmp_path / "other.onnx"
    onnx.write_bytes(b"not used by the coordinator")
    ModelRepository(tmp_path / "models").add(ModelCard(name="big", inputs=[TensorSpec(name="x", shape=[-1, 2])]), onnx)
    wid = await worker(backend)
    await backend.submit_task(task())
    [first] = [t for d in backend._pass() for t in d.tasks]
    await backend.complete_tasks(wid, [TaskCompletion(task_id=first.id, worker_id=wid, attempt=1, result={},
                                                      compute_ms=0.1)])
    for _ in range(20):
        await backend.submit_task(task(model="big"))
    held = [t.model for d in backend._pass() for t in d.tasks]
    assert held == ["big"], "a model whose time is unknown there: the floor, not the short model's cap"
    for _ in range(20):
        await backend.submit_task(task())
    held = [t.model for d in backend._pass() for t in d.tasks]
    assert held == ["m"] * 7, "the short model still fills the worker up to its cap"


async def test_failed_outcomes_do_not_feed_the_model_time(backend: LocalBackend) -> None:
    backend.settings.worker_prefetch, backend.settings.worker_prefetch_max = 1, 8
    wid = await worker(backend)
    for _ in range(20):
        await backend.submit_task(task(max_retries=0))
    [first] = [t for d in backend._pass() for t in d.tasks]
    failed = TaskError(reason="ModelError", message="bad input")
    await backend.complete_tasks(wid, [TaskCompletion(task_id=first.id, worker_id=wid, attempt=1, error=failed,
                                                      compute_ms=0.1)])
    assert (await backend.get_task(first.id)).phase == "Failed"
    assert [len(d.tasks) for d in backend._pass()] == [1], "a fast failure leaves the model time unknown: the floor"


async def test_only_outcomes_applied_and_committed_feed_the_model_time(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.settings.worker_prefetch = backend.settings.worker_prefetch_max = 2
    wid = await worker(backend)
    for _ in range(2):
        await backend.submit_task(task())
    refused, rolled_back = [t for d in backend._pass() for t in d.tasks]

    def report(sent: Any, ms: float) -> TaskCompletion:
        return TaskCompletion(task_id=sent.id, worker_id=wid, attempt=1, result={}, compute_ms=ms)

    monkeypatch.setattr(backend.store, "write_task", lambda before, after: False)  # somebody moved it meanwhile
    [answer] = await backend.complete_tasks(wid, [report(refused, 0.1)])
    assert answer.status == "refused"
    monkeypatch.undo()
    assert backend._model_ms == {}, "a refused outcome does not shift the worker's capacity"

    def broken(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(backend.store, "bump_worker_counter", broken)
    with pytest.raises(sqlite3.OperationalError):
        await backend.complete_tasks(wid, [report(rolled_back, 10.0)])
    monkeypatch.undo()
    assert backend._model_ms == {}, "a batch rolled back does not count"
    [answer] = await backend.complete_tasks(wid, [report(rolled_back, 10.0)])  # the worker sends it again
    assert answer.status == "applied" and backend._model_ms == {wid: {"m": 10.0}}


async def test_applying_outcomes_reads_no_inputs(backend: LocalBackend) -> None:
    backend.settings.worker_prefetch = backend.settings.worker_prefetch_max = 4
    wid = await worker(backend)
    for _ in range(4):
        await backend.submit_task(task())
    pushed = [t for d in backend._pass() for t in d.tasks]
    statements: list[str] = []
    backend.store._db.set_trace_callback(statements.append)
    answers = await backend.complete_tasks(wid, [TaskCompletion(task_id=t.id, worker_id=wid, attempt=1, result={})
                                                 for t in pushed])
    backend.store._db.set_trace_callback(None)
    assert [a.status for a in answers] == ["applied"] * 4
    reads = [s for s in statements if s.startswith("SELECT") and "FROM tasks" in s]
    assert len(reads) == 4 and not [s for s in reads if "inputs" in s or "*" in s], reads
