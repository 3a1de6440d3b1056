"""The local coordinator: schedules tasks onto worker processes on this machine.

All state is in the SQLite :class:`Store`; this class only moves rows through
the shared task state machine (:mod:`legacygpu.core.tasks`) and asks the
shared scheduling strategy (:mod:`legacygpu.core.scheduling`) where each task
goes. Workers never receive a connection: they long-poll
:meth:`LocalBackend.claim_tasks` and post results to
:meth:`LocalBackend.complete_task`.

One background loop (:meth:`reconcile`, every few hundred milliseconds and
whenever something changes) does three things, in order:

1. workers silent for longer than the heartbeat timeout are marked ``lost``
   and their tasks go back to the queue (retried with backoff, or failed
   when no retries are left);
2. tasks past their deadline end ``Failed`` with ``DeadlineExceeded``;
3. runnable queued tasks are assigned to workers.

Every task write is compare-and-set on the phase (and worker and attempt
where they matter), so a completion from an attempt that was already given
up on can never overwrite the outcome of a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from legacygpu.api.backends.local.store import Store
from legacygpu.api.events import EventBus
from legacygpu.api.metrics import Metrics
from legacygpu.api.schemas import (
    ClaimedTask,
    Completion,
    DeviceInfoPublic,
    Heartbeat,
    HeartbeatReply,
    ModelPublic,
    TaskCreate,
    TaskPublic,
    WorkerPublic,
    WorkerRegister,
    WorkerRegistered,
)
from legacygpu.core.config import Settings
from legacygpu.core.errors import ConflictError
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.scheduling import Requirements, WorkerInfo, make_strategy
from legacygpu.core.tasks import (
    ASSIGNED_PHASES,
    Phase,
    Reason,
    RetryPolicy,
    attempts_left,
    check_transition,
    is_terminal,
)
from legacygpu.core.tensors import validate_inputs

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)
_LIVE_WORKER_STATES = ("active", "draining")


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class LocalBackend:
    """Cluster state in SQLite, workers as local processes."""

    name = "local"

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.database_path)
        self.repository = ModelRepository(settings.models_dir)
        self.events = EventBus()
        self.metrics = metrics or Metrics()
        self.strategy = make_strategy(settings.scheduling_strategy)
        self.retry = RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds)
        self._clock = clock
        self._rng = rng or random.Random()
        self._wakeups: dict[str, asyncio.Event] = {}
        self._kick: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # Silence while the coordinator itself was down proves nothing about a worker:
        # restart every live worker's heartbeat clock instead of declaring them all lost.
        now = self._clock()
        for worker in self.store.list_workers(_LIVE_WORKER_STATES):
            self.store.update_worker(worker["id"], last_heartbeat=now)
        self._kick = asyncio.Event()
        self._loop_task = asyncio.create_task(self._loop(), name="local-coordinator")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for event in self._wakeups.values():
            event.set()

    async def _loop(self) -> None:
        assert self._kick is not None
        while True:
            try:
                self.reconcile()
            except Exception:  # the loop must survive anything one pass throws
                log.exception("coordinator pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=0.25)
            self._kick.clear()

    def _poke(self) -> None:
        if self._kick is not None:
            self._kick.set()

    def _wake(self, worker_id: str) -> None:
        event = self._wakeups.get(worker_id)
        if event is not None:
            event.set()

    # the reconcile pass -------------------------------------------------------------------

    def reconcile(self) -> None:
        now = self._clock()
        self._expire_workers(now)
        self._enforce_deadlines(now)
        self._schedule(now)

    def _expire_workers(self, now: float) -> None:
        cutoff = now - self.settings.heartbeat_timeout_seconds
        for worker in self.store.list_workers(_LIVE_WORKER_STATES):
            if worker["last_heartbeat"] < cutoff:
                silent = now - worker["last_heartbeat"]
                log.warning("worker %s lost: no heartbeat for %.1fs", worker["name"], silent)
                self.store.update_worker(worker["id"], state="lost")
                self._release_tasks(worker, Reason.WORKER_LOST, f"worker {worker['name']} stopped heartbeating", now)
                self._publish_worker(worker["id"])

    def _release_tasks(self, worker: dict[str, Any], reason: Reason, why: str, now: float) -> None:
        """Put a worker's tasks back: scheduled ones straight away, running ones as a failed attempt."""
        tasks, _ = self.store.list_tasks(phases=ASSIGNED_PHASES, worker_id=worker["id"], limit=10_000)
        for task in tasks:
            if task["phase"] == Phase.SCHEDULED:
                self._transition(task, Phase.QUEUED, reason, f"{why}; back in the queue", worker_id=None)
            else:
                self._retry_or_fail(task, reason, why, now)

    def _retry_or_fail(self, task: dict[str, Any], reason: str, why: str, now: float) -> bool:
        history = self._close_attempt(task, reason, now)
        if attempts_left(task["attempts"], task["max_retries"]) > 0:
            delay = self.retry.delay(task["attempts"], self._rng)
            message = f"{why}; attempt {task['attempts'] + 1} of {task['max_retries'] + 1} in {delay:.1f}s"
            self.metrics.task_retries.labels(str(reason)).inc()
            return self._transition(
                task, Phase.QUEUED, reason, message, worker_id=None, not_before=now + delay, history=history
            )
        message = f"{why}; no retries left after {task['attempts']} attempt(s)"
        return self._finish(task, Phase.FAILED, reason, message, now, history=history)

    def _enforce_deadlines(self, now: float) -> None:
        for task in self.store.expired_tasks(now):
            history = self._close_attempt(task, Reason.DEADLINE_EXCEEDED, now)
            message = f"task did not finish within timeoutSeconds={task['timeout_seconds']}"
            self._finish(task, Phase.FAILED, Reason.DEADLINE_EXCEEDED, message, now, history=history)

    def _schedule(self, now: float) -> None:
        active = self.store.list_workers(["active"])
        workers = self._worker_infos(active)
        free = sum(max(0, w.capacity - w.assigned) for w in workers.values())
        if free == 0:
            return  # nothing can be placed: do not even read the queue
        names = {w["id"]: w["name"] for w in active}
        for task in self.store.runnable_tasks(now):
            needs = Requirements(model=task["model"], **task["requirements"])
            chosen = self.strategy.pick(needs, list(workers.values()))
            if chosen is None:
                continue
            message = f"assigned to worker {names.get(chosen.id, chosen.id)}"
            if self._transition(task, Phase.SCHEDULED, Reason.ASSIGNED, message, worker_id=chosen.id, scheduled_at=now):
                workers[chosen.id] = dataclasses.replace(chosen, assigned=chosen.assigned + 1)
                self._wake(chosen.id)
                free -= 1
                if free == 0:
                    return

    def _worker_infos(self, active: list[dict[str, Any]]) -> dict[str, WorkerInfo]:
        """The scheduler's view of the ``active`` worker rows."""
        counts = self.store.assigned_counts()
        infos: dict[str, WorkerInfo] = {}
        for w in active:
            infos[w["id"]] = WorkerInfo(
                id=w["id"],
                assigned=counts.get(w["id"], 0),
                capacity=w["concurrency"] * self.settings.worker_prefetch,
                vram_mib=w["device"].get("vram_mib", 0),
                gpu_family=w["device"].get("gpu_family"),
                recent_latency_ms=w["stats"].get("recent_latency_ms"),
            )
        return infos

    # task writes --------------------------------------------------------------------------

    def _transition(self, task: dict[str, Any], phase: Phase, reason: str, message: str, **fields: Any) -> bool:
        """Move ``task`` to ``phase`` if nobody changed it since it was read."""
        check_transition(task["phase"], phase)
        expect = {"phase": task["phase"], "attempts": task["attempts"], "worker_id": task["worker_id"]}
        changed = self.store.update_task(
            task["id"], expect=expect, phase=str(phase), reason=str(reason), message=message, **fields
        )
        if changed:
            self._publish_task(task["id"])
            self._poke()
        return changed

    def _finish(
        self, task: dict[str, Any], phase: Phase, reason: str, message: str, now: float, **fields: Any
    ) -> bool:
        latency_ms = (now - task["created_at"]) * 1000
        if not self._transition(task, phase, reason, message, finished_at=now, latency_ms=latency_ms, **fields):
            return False
        self.metrics.tasks_finished.labels(task["model"], str(phase)).inc()
        if phase == Phase.SUCCEEDED:
            self.metrics.task_duration.labels(task["model"]).observe(latency_ms / 1000)
        if task["worker_id"] and task["phase"] == Phase.RUNNING and phase != Phase.CANCELLED:
            column = "tasks_succeeded" if phase == Phase.SUCCEEDED else "tasks_failed"
            self.store.bump_worker_counter(task["worker_id"], column)
        return True

    @staticmethod
    def _close_attempt(
        task: dict[str, Any], outcome: str, now: float, *, reported: bool = False
    ) -> list[dict[str, Any]]:
        """The history with the running attempt closed; ``reported`` marks an outcome the worker sent."""
        history = list(task["history"])
        if task["phase"] == Phase.RUNNING and history and history[-1].get("outcome") is None:
            history[-1] = {**history[-1], "outcome": str(outcome), "finished_at": now}
            if reported:
                history[-1]["reported"] = True
        return history

    # tasks --------------------------------------------------------------------------------

    async def submit_task(self, request: TaskCreate) -> TaskPublic:
        card = self.repository.get(request.model)
        validate_inputs(card, request.inputs)
        now = self._clock()
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        self.store.add_task(
            {
                "id": task_id,
                "model": request.model,
                "inputs": [t.model_dump(exclude_none=True) for t in request.inputs],
                "parameters": request.parameters,
                "priority": request.priority,
                "timeout_seconds": request.timeout_seconds or self.settings.default_timeout_seconds,
                "max_retries": (
                    request.max_retries if request.max_retries is not None else self.settings.default_max_retries
                ),
                "requirements": request.requirements.model_dump(),
                "phase": str(Phase.QUEUED),
                "reason": str(Reason.ACCEPTED),
                "message": "validated and waiting for a worker",
                "created_at": now,
            }
        )
        self.metrics.tasks_submitted.labels(request.model).inc()
        self._publish_task(task_id, "task.created")
        self._poke()
        return self._task_public(self.store.get_task(task_id))

    async def get_task(self, task_id: str) -> TaskPublic:
        return self._task_public(self.store.get_task(task_id))

    async def list_tasks(
        self,
        *,
        phases: Sequence[str] | None = None,
        worker_id: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[TaskPublic], int]:
        rows, count = self.store.list_tasks(phases=phases, worker_id=worker_id, model=model, limit=limit, offset=offset)
        return [self._task_public(row, with_result=False) for row in rows], count

    async def cancel_task(self, task_id: str) -> TaskPublic:
        task = self.store.get_task(task_id)
        if is_terminal(task["phase"]):
            raise ConflictError(f"task {task_id} is already {task['phase']} and cannot be cancelled")
        now = self._clock()
        history = self._close_attempt(task, Reason.CANCELLED, now)
        if not self._finish(task, Phase.CANCELLED, Reason.CANCELLED, "cancelled by a user", now, history=history):
            raise ConflictError(f"task {task_id} changed while being cancelled; try again")
        if task["worker_id"]:
            self._wake(task["worker_id"])
        return self._task_public(self.store.get_task(task_id))

    def _task_public(self, task: dict[str, Any], *, with_result: bool = True) -> TaskPublic:
        history = [
            {**h, "started_at": _dt(h.get("started_at")), "finished_at": _dt(h.get("finished_at"))}
            for h in task["history"]
        ]
        return TaskPublic(
            id=task["id"],
            model=task["model"],
            phase=Phase(task["phase"]),
            reason=task["reason"],
            message=task["message"],
            priority=task["priority"],
            worker_id=task["worker_id"],
            attempts=task["attempts"],
            max_retries=task["max_retries"],
            timeout_seconds=task["timeout_seconds"],
            created_at=_dt(task["created_at"]),
            scheduled_at=_dt(task["scheduled_at"]),
            started_at=_dt(task["started_at"]),
            finished_at=_dt(task["finished_at"]),
            latency_ms=task["latency_ms"],
            compute_ms=task["compute_ms"],
            history=history,
            result=task["result"] if with_result else None,
        )

    # workers ------------------------------------------------------------------------------

    async def register_worker(self, request: WorkerRegister) -> WorkerRegistered:
        now = self._clock()
        worker_id = f"w-{uuid.uuid4().hex[:8]}"
        self.store.add_worker(
            {
                "id": worker_id,
                "name": request.name,
                "host": request.host,
                "pid": request.pid,
                "state": "active",
                "device": request.device.model_dump(),
                "concurrency": request.concurrency,
                "registered_at": now,
                "last_heartbeat": now,
                "stats": {**request.stats, "running": 0},
            }
        )
        log.info("worker %s registered as %s (%s)", request.name, worker_id, request.device.name)
        self._publish_worker(worker_id, "worker.registered")
        self._poke()
        return WorkerRegistered(
            id=worker_id,
            heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
            model_repository=str(self.repository.root),
        )

    def _live_worker(self, worker_id: str) -> dict[str, Any]:
        worker = self.store.get_worker(worker_id)
        if worker["state"] not in _LIVE_WORKER_STATES:
            raise ConflictError(f"worker {worker_id} is {worker['state']}; register again")
        return worker

    async def heartbeat(self, worker_id: str, beat: Heartbeat) -> HeartbeatReply:
        worker = self._live_worker(worker_id)
        self.store.update_worker(worker_id, last_heartbeat=self._clock(), stats={**beat.stats, "running": beat.running})
        self._publish_worker(worker_id, "worker.heartbeat")
        interval = self.settings.heartbeat_interval_seconds
        return HeartbeatReply(state=worker["state"], heartbeat_interval_seconds=interval)

    async def claim_tasks(self, worker_id: str, max_tasks: int, wait_seconds: float) -> list[ClaimedTask]:
        deadline = time.monotonic() + wait_seconds
        wakeup = self._wakeups.setdefault(worker_id, asyncio.Event())
        while True:
            wakeup.clear()
            worker = self._live_worker(worker_id)
            claimed = self._claim_now(worker, max_tasks) if worker["state"] == "active" else []
            remaining = deadline - time.monotonic()
            if claimed or remaining <= 0 or worker["state"] != "active":
                return claimed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=remaining)

    def _claim_now(self, worker: dict[str, Any], max_tasks: int) -> list[ClaimedTask]:
        now = self._clock()
        self.store.update_worker(worker["id"], last_heartbeat=now)
        tasks, _ = self.store.list_tasks(
            phases=[Phase.SCHEDULED], worker_id=worker["id"], limit=max_tasks, newest_first=False
        )
        claimed: list[ClaimedTask] = []
        for task in tasks:
            attempt = task["attempts"] + 1
            history = [*task["history"], {"attempt": attempt, "worker_id": worker["id"], "started_at": now}]
            message = f"running on worker {worker['name']} (attempt {attempt})"
            if self._transition(
                task, Phase.RUNNING, Reason.STARTED, message, attempts=attempt, started_at=now, history=history
            ):
                self.metrics.queue_duration.labels(task["model"]).observe(now - task["created_at"])
                claimed.append(
                    ClaimedTask(
                        id=task["id"],
                        model=task["model"],
                        attempt=attempt,
                        inputs=task["inputs"],
                        parameters=task["parameters"],
                    )
                )
        return claimed

    async def complete_task(self, task_id: str, completion: Completion) -> TaskPublic:
        task = self.store.get_task(task_id)
        current = task["worker_id"] == completion.worker_id and task["attempts"] == completion.attempt
        if is_terminal(task["phase"]) and current and task["history"] and task["history"][-1].get("reported"):
            return self._task_public(task)  # the same completion again: already applied
        if task["phase"] != Phase.RUNNING or not current:
            raise ConflictError(
                f"task {task_id} is {task['phase']} (attempt {task['attempts']}, worker {task['worker_id']}); "
                f"the result of attempt {completion.attempt} from worker {completion.worker_id} is discarded"
            )
        now = self._clock()
        fields: dict[str, Any] = {"compute_ms": completion.compute_ms}
        if completion.compute_ms is not None:
            self.metrics.compute_duration.labels(task["model"]).observe(completion.compute_ms / 1000)
        if completion.error is None:
            history = self._close_attempt(task, Reason.COMPLETED, now, reported=True)
            self._finish(
                task, Phase.SUCCEEDED, Reason.COMPLETED, "inference finished", now,
                result=completion.result or {}, history=history, **fields,
            )
        elif completion.error.retryable:
            self.store.update_task(task_id, **fields)
            self._retry_or_fail(task, completion.error.reason, completion.error.message, now)
        else:
            history = self._close_attempt(task, completion.error.reason, now, reported=True)
            self._finish(
                task, Phase.FAILED, completion.error.reason, completion.error.message, now, history=history, **fields
            )
        self._poke()
        return self._task_public(self.store.get_task(task_id))

    async def drain_worker(self, worker_id: str) -> WorkerPublic:
        worker = self._live_worker(worker_id)
        self.store.update_worker(worker_id, state="draining")
        tasks, _ = self.store.list_tasks(phases=[Phase.SCHEDULED], worker_id=worker_id, limit=10_000)
        for task in tasks:
            self._transition(task, Phase.QUEUED, Reason.WORKER_DRAINED, f"worker {worker['name']} is draining")
        self._wake(worker_id)
        self._publish_worker(worker_id)
        return await self.get_worker(worker_id)

    async def deregister_worker(self, worker_id: str) -> WorkerPublic:
        """A worker leaving on purpose: anything it still holds goes back to the queue."""
        worker = self.store.get_worker(worker_id)
        if worker["state"] in _LIVE_WORKER_STATES:
            self.store.update_worker(worker_id, state="stopped")
            self._release_tasks(worker, Reason.WORKER_DRAINED, f"worker {worker['name']} stopped", self._clock())
            self._publish_worker(worker_id)
        return await self.get_worker(worker_id)

    async def list_workers(self) -> list[WorkerPublic]:
        counts = self.store.assigned_counts()
        return [self._worker_public(w, counts) for w in self.store.list_workers()]

    async def get_worker(self, worker_id: str) -> WorkerPublic:
        return self._worker_public(self.store.get_worker(worker_id), self.store.assigned_counts())

    @staticmethod
    def _worker_public(worker: dict[str, Any], counts: dict[str, int]) -> WorkerPublic:
        return WorkerPublic(
            id=worker["id"],
            name=worker["name"],
            host=worker["host"],
            pid=worker["pid"],
            state=worker["state"],
            device=DeviceInfoPublic(**worker["device"]),
            concurrency=worker["concurrency"],
            assigned=counts.get(worker["id"], 0),
            registered_at=_dt(worker["registered_at"]),
            last_heartbeat=_dt(worker["last_heartbeat"]),
            tasks_succeeded=worker["tasks_succeeded"],
            tasks_failed=worker["tasks_failed"],
            stats=worker["stats"],
        )

    # models and summaries -----------------------------------------------------------------

    async def list_models(self) -> list[ModelPublic]:
        return [ModelPublic.from_card(card) for card in self.repository.list()]

    def snapshot(self) -> dict[str, Any]:
        """Counts for the metrics collector (synchronous, cheap)."""
        workers = self.store.list_workers()
        counts = self.store.assigned_counts()
        by_state: dict[str, int] = {state: 0 for state in ("active", "draining", "stopped", "lost")}
        for w in workers:
            by_state[w["state"]] = by_state.get(w["state"], 0) + 1
        phases = {str(p): 0 for p in Phase}
        phases.update(self.store.phase_counts())
        return {
            "tasks_by_phase": phases,
            "workers_by_state": by_state,
            "workers": [{**w, "assigned": counts.get(w["id"], 0)} for w in workers],
        }

    async def summary(self) -> dict[str, Any]:
        snap = self.snapshot()
        now = self._clock()
        window = 60.0
        recent = self.store.recent_finished(now - 300)
        succeeded = [t for t in recent if t["phase"] == Phase.SUCCEEDED]
        last_minute = [t for t in succeeded if t["finished_at"] >= now - window]
        latencies = [t["latency_ms"] for t in succeeded if t["latency_ms"] is not None]
        compute = [t["compute_ms"] for t in succeeded if t["compute_ms"] is not None]
        return {
            "backend": self.name,
            "tasks_by_phase": snap["tasks_by_phase"],
            "workers_by_state": snap["workers_by_state"],
            "queue_depth": snap["tasks_by_phase"].get("Queued", 0),
            "throughput_per_second": len(last_minute) / window,
            "latency_ms": {f"p{q}": _percentile(latencies, q) for q in (50, 90, 99)},
            "compute_ms": {f"p{q}": _percentile(compute, q) for q in (50, 90, 99)},
            "window_seconds": {"throughput": window, "latency": 300},
        }

    # events -------------------------------------------------------------------------------

    def _publish_task(self, task_id: str, event_type: str = "task.updated") -> None:
        if not self.events.subscribers:
            return
        task = self._task_public(self.store.get_task(task_id), with_result=False)
        self.events.publish(event_type, task.model_dump(mode="json", exclude={"history"}))

    def _publish_worker(self, worker_id: str, event_type: str = "worker.updated") -> None:
        if not self.events.subscribers:
            return
        worker = self._worker_public(self.store.get_worker(worker_id), self.store.assigned_counts())
        self.events.publish(event_type, worker.model_dump(mode="json"))
