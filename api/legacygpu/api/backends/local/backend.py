"""The local backend (`LocalBackend`): a coordinator scheduling tasks onto worker processes on this machine.

All state is in the SQLite :class:`Store`; this class only reads rows as
:class:`~legacygpu.core.lifecycle.TaskRecord`, applies the shared lifecycle
moves (:mod:`legacygpu.core.lifecycle`, the same ones the Kubernetes side
uses), and writes the result back; the shared placement plan and
scheduling strategy (:mod:`legacygpu.core.scheduling`) say where each task
goes.

Work is pushed, not claimed: a pass that placed tasks also starts them
(:meth:`start_scheduled`: Scheduled → Running, the attempt counts: what a
worker's claim used to do) in the same transaction, and the loop then sends
each worker its new tasks in one request over the task channel
(:mod:`.channel`: the worker's serving port, on the facade's persistent
connections). A push the worker refused or never received puts its tasks
back in the queue with their attempt undone (``lifecycle.undeliver``), and
the worker gets no more until its next heartbeat. Workers
report outcomes in batches (:meth:`LocalBackend.complete_tasks`), a batch
applied in one transaction; a stale outcome in it is refused on its own.

One pass (:meth:`reconcile`, every few hundred milliseconds and whenever
something changes that could let a queued task start: a task queued, a
slot freed, a worker registered or reachable again) does, in order:

1. workers silent for longer than the heartbeat timeout are marked ``lost``
   and their tasks go back to the queue (retried with backoff, or failed
   when no retries are left);
2. tasks past their deadline end ``Failed`` with ``DeadlineExceeded``;
3. runnable queued tasks are assigned to workers (Scheduled), for
   the same pass to start (:meth:`start_scheduled`) and, once committed, send;
4. at most once a minute, tasks finished longer ago than
   ``task_retention_seconds`` are deleted with their results (0 keeps them).

Passes are coalesced without waiting: a change asks for a pass, which is
queued on the database thread straight away (no trip through the event
loop), behind whatever that thread has still to do; any number of changes
made before it starts cost that one pass, a database-thread call (a batch
of outcomes) asks at most once, and the pass's own writes never ask for
another. When nothing else waits for that thread, the pass runs at once,
in the call that asked for it, before the call's answer goes back to the
event loop: the loop then wakes once, for both, and sends the push before
it answers the submitter (rather than answering while the pass runs beside
it, each waiting on the other for the interpreter lock). So on an idle
cluster a submitted task is placed, started and pushed at once, and under
load the queued work is taken in one pass. The pass reads
only what it can act on: the queue one page of free slots at a time,
expired tasks through an index.

Every task write is compare-and-set on the phase (and worker and attempt
where they matter), so a completion from an attempt that was already given
up on can never overwrite the outcome of a newer one.

The database never blocks the event loop: every method that touches it
runs on one database thread (:meth:`_db`), in order, as the loop once ran
them, so the coordinator's logic stays sequential. What that thread does
to the loop's objects (wake-ups, events) goes back through
``call_soon_threadsafe`` (:meth:`_on_loop`). While another process holds
the database's write lock, a write waits up to
``database_busy_timeout_seconds`` on that thread and then fails with
"database is locked" (a 503 with ``Retry-After``, see
:mod:`legacygpu.api.errors`); the loop keeps answering, and
:meth:`health` reads on a connection of its own, so ``/cluster/health``
reports the lock instead of waiting behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Literal, TypeVar

from legacygpu.api.backends.local import views
from legacygpu.api.backends.local.channel import Delivery, Refused, TaskChannel, Unanswered
from legacygpu.api.backends.local.store import PRUNE_BATCH, Store, probe, to_record
from legacygpu.api.backends.records import task_public
from legacygpu.api.events import EventBus
from legacygpu.api.metrics import Metrics
from legacygpu.api.schemas import (
    ClaimedTask,
    CompletionAnswer,
    Heartbeat,
    HeartbeatReply,
    ModelPublic,
    TaskCompletion,
    TaskCreate,
    TaskPublic,
    WorkerPublic,
    WorkerRegister,
    WorkerRegistered,
)
from legacygpu.core import lifecycle
from legacygpu.core.config import Settings
from legacygpu.core.errors import ConflictError, NotFoundError, ValidationError
from legacygpu.core.lifecycle import TaskRecord
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.scheduling import LATENCY_SMOOTHING, WorkerInfo, WorkerStats, make_strategy, prefetch
from legacygpu.core.tasks import ASSIGNED_PHASES, Phase, Reason, RetryPolicy
from legacygpu.core.tensors import validate_inputs

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)
_LIVE_WORKER_STATES = ("active", "draining")
_MAX_QUEUE_SCAN = 500
"""Queued rows one pass reads at most while looking past tasks that no worker can take now."""
_PRUNE_INTERVAL_SECONDS = 60.0
_UNSTARTED: dict[str, Any] = {"worker_id": None, "attempts": 0, "scheduled_at": None, "started_at": None,
                              "finished_at": None, "not_before": 0.0, "latency_ms": None, "compute_ms": None,
                              "history": [], "result": None}
"""The columns of a new task row that :meth:`LocalBackend._task_row` leaves to their defaults, as they read back."""
_PASS_INTERVAL_SECONDS = 0.25
"""A pass runs at least this often (for deadlines and silent workers) besides the ones changes ask for."""
_PUSH_GRACE_SECONDS = 15.0
"""Longer than a push may take (:mod:`.channel` gives up after 10 s): a task started this long ago has arrived."""
_T = TypeVar("_T")


def _endpoint(worker: dict[str, Any]) -> str | None:
    """The REST serving URL a worker announced in its stats, which its tasks are pushed to."""
    serving = worker["stats"].get("serving") if isinstance(worker["stats"], dict) else None
    rest = serving.get("rest") if isinstance(serving, dict) else None
    return rest.rstrip("/") if isinstance(rest, str) and rest else None


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
        self.store = Store(settings.database_path, busy_timeout=settings.database_busy_timeout_seconds)
        self.repository = ModelRepository(settings.models_dir)
        self.events = EventBus()
        self.metrics = metrics or Metrics()
        self.strategy = make_strategy(settings.scheduling_strategy)
        self.retry = RetryPolicy(settings.retry_base_seconds, settings.retry_cap_seconds)
        self._clock = clock
        self._rng = rng or random.Random()
        self.channel: TaskChannel | None = None
        """Where started tasks go (:meth:`connect_workers`); until then no task is placed."""
        self._model_ms: dict[str, dict[str, float]] = {}
        """Moving average of the model time of each (worker, model)'s successful outcomes (what capacity follows)."""
        self._unreachable: set[str] = set()
        """Workers whose last push failed: given nothing until their next heartbeat."""
        self._pushes: set[asyncio.Task[None]] = set()
        self._placed = True
        """There may be placed tasks that no pass has started yet (:meth:`_pass` starts them only then): a pass
        placed some, a worker became reachable again, or the facade (re)started (what it placed before stopping
        is still Scheduled)."""
        self._running = False
        """Started and not stopped: passes run (and until then a change asks for none)."""
        self._pass_queued = False
        self._pass_lock = threading.Lock()
        self._in_db_call = False
        self._poke_wanted = False
        self._db_waiting = 0
        """Calls handed to the database thread (:meth:`_db`) and not started yet (under ``_pass_lock``)."""
        self._in_pass = False
        self._next_prune = 0.0
        self._loop_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legacygpu-db")

    # lifecycle ----------------------------------------------------------------------------

    def connect_workers(self, channel: TaskChannel) -> None:
        """Hand started tasks to workers through ``channel`` (the facade's :class:`~.channel.HttpChannel`)."""
        self.channel = channel
        self._poke()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._db(self._restart_heartbeat_clocks)
        with self._pass_lock:
            # A pass queued when stop() shut the old thread down was dropped unrun: none is queued on this one;
            # nor is any call that was waiting for it.
            self._pass_queued = False
            self._db_waiting = 0
            self._running = True
        self._loop_task = asyncio.create_task(self._loop_forever(), name="local-coordinator")

    def _restart_heartbeat_clocks(self) -> None:
        # Silence while the coordinator itself was down proves nothing about a worker:
        # restart every live worker's heartbeat clock instead of declaring them all lost.
        now = self._clock()
        for worker in self.store.list_workers(_LIVE_WORKER_STATES):
            self.store.update_worker(worker["id"], last_heartbeat=now)

    async def stop(self) -> None:
        self._running = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        await asyncio.gather(*self._pushes, return_exceptions=True)
        self._db_thread.shutdown(wait=False, cancel_futures=True)
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="legacygpu-db")  # for a restart

    async def _loop_forever(self) -> None:
        while True:
            self._request_pass()
            await asyncio.sleep(_PASS_INTERVAL_SECONDS)

    def _request_pass(self) -> None:
        """Queue a pass on the database thread, unless one is queued and not started (it will see this too)."""
        with self._pass_lock:
            if self._pass_queued or not self._running:
                return
            self._pass_queued = True
        try:
            self._db_thread.submit(self._queued_pass)
        except RuntimeError:  # the thread was shut down: stopping
            self._pass_queued = False

    def _queued_pass(self) -> None:
        """A pass on the database thread; what it started goes to the event loop to be sent."""
        with self._pass_lock:
            self._pass_queued = False
        try:
            deliveries = self._one_call(self._pass)
        except Exception:  # the coordinator must survive anything one pass throws
            log.exception("coordinator pass failed")
            return
        if deliveries:
            self._on_loop(self._send, deliveries)

    def _send(self, deliveries: list[Delivery]) -> None:
        """Push each delivery (on the event loop), without waiting for the answers."""
        if not self._running:
            return  # stopping: the workers' heartbeats tell a restarted facade these never arrived
        for delivery in deliveries:
            push = asyncio.create_task(self._push(delivery), name="local-push")
            self._pushes.add(push)
            push.add_done_callback(self._pushes.discard)

    async def _push(self, delivery: Delivery) -> None:
        assert self.channel is not None
        try:
            completed = await self.channel.push(delivery)
        except Refused as exc:
            log.warning("%s; its %d task(s) go back to the queue", exc, len(delivery.tasks))
            await self._db(self._undeliver, delivery, f"not delivered: {exc}")
            return
        except Unanswered as exc:
            # It may hold them: they stay Running there until it reports them or is declared lost.
            log.warning("%s; its %d task(s) stay with it", exc, len(delivery.tasks))
            return
        if completed:  # run before the answer: applied as that worker's completions
            try:
                await self.complete_tasks(delivery.worker_id, completed)
            except Exception:  # the worker holds them no more: the heartbeat check puts them back
                log.exception("applying the outcome(s) worker %s answered a push with failed", delivery.worker_name)

    async def _db(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` (anything that touches the database) on the database thread, off the event loop."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        with self._pass_lock:
            self._db_waiting += 1
        return await self._loop.run_in_executor(self._db_thread, functools.partial(self._started_call, fn, *args,
                                                                                   **kwargs))

    def _started_call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        with self._pass_lock:
            self._db_waiting -= 1
        return self._one_call(fn, *args, **kwargs)

    def _one_call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """One database-thread call; the pokes it makes (one per write of a batch) become one pass, at its end:
        run there and then when no other call waits for the thread, else queued behind them (:meth:`_poke`)."""
        self._in_db_call = True
        try:
            return fn(*args, **kwargs)
        finally:
            self._in_db_call = False
            if self._poke_wanted:
                self._poke_wanted = False
                with self._pass_lock:
                    at_once = self._running and not self._pass_queued and self._db_waiting <= 0
                if at_once:
                    self._queued_pass()
                else:
                    self._poke()

    def _on_loop(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn`` on the event loop: at once when already there, else queued from the database thread."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or here is loop:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed while shutting down: nobody to tell
                loop.call_soon_threadsafe(fn, *args)

    def _poke(self) -> None:
        """Ask for a pass; any number of pokes before it starts make one pass, and a pass never pokes itself.

        A database-thread call pokes once, when it ends, however many writes it made, and the pass is
        queued right behind it on that thread (:meth:`_request_pass`). So a batch of outcomes, or
        submissions queued while the thread was busy, cost one pass, not one per write.
        """
        if self._in_pass:
            return
        if self._in_db_call:
            self._poke_wanted = True
            return
        self._request_pass()

    # the reconcile pass -------------------------------------------------------------------

    def _pass(self) -> list[Delivery]:
        """The coordinator's pass: :meth:`reconcile`, then start what it (or anything before) placed, in one
        transaction and one database-thread call; what to send, once committed."""
        with self.store.transaction():
            reachable = self.reconcile()
            deliveries = self.start_scheduled(reachable) if self._placed else []
        self._placed = False  # only once committed: a pass that failed leaves them to the next one
        return deliveries

    def reconcile(self) -> list[dict[str, Any]]:
        """One pass, in one transaction; what it places, :meth:`start_scheduled` starts and :meth:`_send` sends.

        Returns the reachable workers it placed on (the live workers are listed once per pass), for
        :meth:`start_scheduled` to reuse.
        """
        now = self._clock()
        self._in_pass = True
        try:
            with self.store.transaction():
                live = self.store.list_workers(_LIVE_WORKER_STATES)
                lost = self._expire_workers(now, live)
                self._forget_workers(now)
                self._enforce_deadlines(now)
                reachable = self._reachable(w for w in live if w["id"] not in lost)
                self._placed |= self._schedule(now, reachable)
                self._prune(now)
        finally:
            self._in_pass = False
        return reachable

    def _reachable(self, workers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The active ones of ``workers`` the channel can reach: they announced a serving endpoint and their last
        push arrived."""
        if self.channel is None:
            return []
        return [w for w in workers
                if w["state"] == "active" and _endpoint(w) is not None and w["id"] not in self._unreachable]

    def _expire_workers(self, now: float, live: list[dict[str, Any]]) -> set[str]:
        """Mark the ``live`` workers silent past the heartbeat timeout lost, releasing their tasks; their ids."""
        cutoff = now - self.settings.heartbeat_timeout_seconds
        lost: set[str] = set()
        for worker in live:
            if worker["last_heartbeat"] < cutoff:
                lost.add(worker["id"])
                silent = now - worker["last_heartbeat"]
                log.warning("worker %s lost: no heartbeat for %.1fs", worker["name"], silent)
                self.store.update_worker(worker["id"], state="lost")
                self._release_tasks(worker, Reason.WORKER_LOST, f"worker {worker['name']} stopped heartbeating", now)
                self._publish_worker(worker["id"])
        return lost

    def _forget_workers(self, now: float) -> None:
        """Registry hygiene: stopped and lost workers leave the list once silent past the retention period."""
        cutoff = now - self.settings.worker_retention_seconds
        for worker_id in self.store.delete_workers(("stopped", "lost"), cutoff):
            self._model_ms.pop(worker_id, None)
            log.info("worker %s removed: stopped or lost for over %.0fs", worker_id,
                     self.settings.worker_retention_seconds)
            self._on_loop(self.events.publish, "worker.removed", {"id": worker_id})

    def _release_tasks(self, worker: dict[str, Any], reason: Reason, why: str, now: float) -> None:
        """Put a worker's tasks back: scheduled ones straight away, running ones as a failed attempt."""
        rows, _ = self.store.list_tasks(phases=ASSIGNED_PHASES, worker_id=worker["id"], limit=10_000)
        for task in map(to_record, rows):
            after = lifecycle.release(task, reason=reason, why=why, now=now, policy=self.retry, rng=self._rng)
            self._apply(task, after)

    def _enforce_deadlines(self, now: float) -> None:
        for task in map(to_record, self.store.expired_tasks(now)):
            self._apply(task, lifecycle.expire(task, now=now))

    def _schedule(self, now: float, active: list[dict[str, Any]]) -> bool:
        """Place runnable queued tasks, reading the queue one page of free slots at a time.

        Each page holds only as many rows as there are free slots, so a long
        queue costs no more than the work that can start now; a further page
        is read only while slots remain that the previous page could not
        fill (its tasks needed a worker that has no room or does not exist).
        Whether it placed any.
        """
        workers = self._worker_infos(active)
        names = {w["id"]: w["name"] for w in active}
        offset, placed_any = 0, False
        while offset < _MAX_QUEUE_SCAN:
            free = sum(max(w.capacity - w.assigned, 0) for w in workers if w.accepting)
            if free == 0:
                return placed_any  # nothing can be placed: do not read (more of) the queue
            page = [to_record(row) for row in self.store.runnable_tasks(now, limit=free, offset=offset)]
            placed = 0
            for task, chosen in lifecycle.plan_assignments(page, workers, self.strategy):
                after = lifecycle.assign(task, worker_id=chosen.id, worker_name=names.get(chosen.id), now=now)
                if self._apply(task, after):
                    placed += 1
                    placed_any = True
                    workers = [replace(w, assigned=w.assigned + 1) if w.id == chosen.id else w for w in workers]
            if len(page) < free:
                return placed_any  # the queue is exhausted
            offset += len(page) - placed  # placed rows left the queue; skip only those that stayed
        return placed_any

    def start_scheduled(self, reachable: list[dict[str, Any]] | None = None) -> list[Delivery]:
        """Start every scheduled task of a reachable worker, in one transaction; one :class:`Delivery` per worker.

        This takes in tasks placed earlier too: ones whose push a restarted
        facade never made, or whose worker was unreachable then.
        ``reachable`` is the pass's list of reachable workers (read here when not given).
        """
        now = self._clock()
        if reachable is None:
            reachable = self._reachable(self.store.list_workers(["active"]))
        by_id = {w["id"]: w for w in reachable}
        started: dict[str, list[ClaimedTask]] = {}
        with self.store.transaction():  # returned (and so sent) only once committed
            for row in self.store.scheduled_tasks():
                worker = by_id.get(row["worker_id"])
                if worker is None:
                    continue  # draining, lost or unreachable: drain, release or the next heartbeat deal with it
                task = to_record(row)
                after = lifecycle.start(task, worker_id=worker["id"], worker_name=worker["name"], now=now)
                if self._apply(task, after):
                    self.metrics.queue_duration.labels(task.model).observe(now - task.created_at)
                    started.setdefault(worker["id"], []).append(
                        ClaimedTask(id=task.id, model=task.model, attempt=after.attempts,
                                    inputs=row["inputs"], parameters=row["parameters"])
                    )
        return [Delivery(worker_id=wid, worker_name=by_id[wid]["name"], url=str(_endpoint(by_id[wid])),
                         tasks=tuple(tasks)) for wid, tasks in started.items()]

    def _undeliver(self, delivery: Delivery, why: str, *, unreachable: bool = True) -> None:
        """The worker does not hold a push's tasks: they go back to the queue as if never started (no attempt
        spent)."""
        if unreachable:
            self._unreachable.add(delivery.worker_id)
        with self.store.transaction():
            for sent in delivery.tasks:
                try:
                    task = self.store.get_record(sent.id)
                except NotFoundError:
                    continue
                if task.phase != Phase.RUNNING or task.worker_id != delivery.worker_id or task.attempts != sent.attempt:
                    continue  # moved on already (cancelled, expired, the worker lost)
                self._apply(task, lifecycle.undeliver(task, reason=Reason.WORKER_LOST, why=why))

    def _recover_lost_pushes(self, worker: dict[str, Any], holding: set[str]) -> None:
        """Tasks Running on a worker that says it does not hold them, started long enough ago that their push
        has either arrived or failed, were never delivered (the facade stopped mid-push, or the push went
        unanswered): they go back to the queue, no attempt spent."""
        grace = _PUSH_GRACE_SECONDS + self.settings.heartbeat_interval_seconds
        cutoff = self._clock() - grace
        lost = [ClaimedTask(id=row["id"], model=row["model"], attempt=row["attempts"], inputs=[], parameters={})
                for row in self.store.started_before(worker["id"], cutoff) if row["id"] not in holding]
        if lost:
            log.warning("worker %s does not hold %d task(s) pushed to it over %.0fs ago", worker["name"],
                        len(lost), grace)
            delivery = Delivery(worker_id=worker["id"], worker_name=worker["name"], url="", tasks=tuple(lost))
            # Either the push never arrived, or the worker ran the task in the push's answer and that answer was
            # lost: the worker cannot tell which, so the message says both. In the second case the task runs again
            # under the same attempt, and its history shows one run where there were two.
            self._undeliver(delivery, f"worker {worker['name']} does not hold it: the push did not arrive, or its "
                                      "answer, carrying the outcome, was lost", unreachable=False)

    def _prune(self, now: float) -> None:
        """Delete tasks finished more than the retention period ago, a batch per pass, checked once a minute."""
        retention = self.settings.task_retention_seconds
        if retention <= 0 or now < self._next_prune:
            return
        deleted = self.store.prune_finished(now - retention)
        if deleted:
            log.info("deleted %d task(s) finished more than %.0fs ago", deleted, retention)
        # More left over after a full batch: go on next pass; else look again in a minute.
        self._next_prune = now if deleted >= PRUNE_BATCH else now + _PRUNE_INTERVAL_SECONDS

    def _worker_infos(self, active: list[dict[str, Any]]) -> list[WorkerInfo]:
        """The scheduler's view of the ``active`` worker rows.

        A worker's capacity follows its model time (:func:`~legacygpu.core.scheduling.prefetch`), per model:
        a task of a model it ran successfully since this facade started is placed while it holds fewer than
        its concurrency times that model's prefetch; one of a model whose time there is unknown, while it
        holds fewer than its concurrency times the floor. So a worker that ran a tiny model is not given a
        tiny model's count of long tasks (one average across models would).
        """
        counts = self.store.assigned_counts()
        floor, cap = self.settings.worker_prefetch, self.settings.worker_prefetch_max
        infos = []
        for w in active:
            stats = WorkerStats.from_local(w["stats"])
            slots = w["concurrency"]
            by_model = {model: slots * prefetch(ms, floor=floor, cap=cap)
                        for model, ms in self._model_ms.get(w["id"], {}).items()}
            infos.append(stats.worker_info(
                w["id"],
                assigned=counts.get(w["id"], 0),
                capacity=max([slots * floor, *by_model.values()]),
                vram_mib=w["device"].get("vram_mib", 0),
                gpu_family=w["device"].get("gpu_family"),
                model_capacity=by_model,
                default_capacity=slots * floor,
            ))
        return infos

    # task writes --------------------------------------------------------------------------

    def _apply(self, before: TaskRecord, after: TaskRecord) -> bool:
        """Store one lifecycle move, if nobody changed the task since ``before`` was read.

        Also the move's side effects: events, metrics and the worker's
        success and failure counters (a cancellation is nobody's failure).
        """
        if not self.store.write_task(before, after):
            return False
        self._publish_task(after.id)
        held_before, held_after = before.phase in ASSIGNED_PHASES, after.phase in ASSIGNED_PHASES
        if after.phase == Phase.QUEUED or (held_before and not held_after):
            self._poke()  # a task to place, or a slot freed; starting a held task changes neither
        if before.phase == Phase.RUNNING and after.phase == Phase.QUEUED:
            self.metrics.task_retries.labels(after.reason).inc()
        if after.terminal:
            self.metrics.tasks_finished.labels(after.model, str(after.phase)).inc()
            if after.phase == Phase.SUCCEEDED and after.latency_ms is not None:
                self.metrics.task_duration.labels(after.model).observe(after.latency_ms / 1000)
            if before.worker_id and before.phase == Phase.RUNNING and after.phase != Phase.CANCELLED:
                column = "tasks_succeeded" if after.phase == Phase.SUCCEEDED else "tasks_failed"
                self.store.bump_worker_counter(before.worker_id, column)
        return True

    # tasks --------------------------------------------------------------------------------

    async def submit_task(self, request: TaskCreate) -> TaskPublic:
        [task] = await self._db(self._submit_tasks, [request], numbered=False)
        return task

    async def submit_tasks(self, requests: Sequence[TaskCreate]) -> list[TaskPublic]:
        """Several tasks in one transaction: all stored, or (one is invalid, naming it ``tasks[i]``) none."""
        return await self._db(self._submit_tasks, requests, numbered=True)

    def _submit_tasks(self, requests: Sequence[TaskCreate], *, numbered: bool) -> list[TaskPublic]:
        now = self._clock()
        rows = []
        for i, request in enumerate(requests):  # every one checked before any is stored
            try:
                validate_inputs(self.repository.get(request.model), request.inputs)
            except ValidationError as exc:
                raise (type(exc)(f"tasks[{i}]: {exc}") if numbered else exc) from exc
            rows.append(self._task_row(request, now))
        with self.store.transaction():
            for row in rows:
                self.store.add_task(row)
        for row in rows:
            self.metrics.tasks_submitted.labels(row["model"]).inc()
            self._publish_task(row["id"], "task.created")
        self._poke()
        return [self._task_public({**_UNSTARTED, **row}) for row in rows]

    def _task_row(self, request: TaskCreate, now: float) -> dict[str, Any]:
        """The row of a newly admitted task (what :meth:`Store.add_task` stores)."""
        task_id = f"task-{uuid.uuid4().hex[:12]}"
        admitted = lifecycle.admit(TaskRecord(id=task_id, model=request.model, created_at=now), now=now)
        return {
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
            "phase": str(admitted.phase),
            "reason": admitted.reason,
            "message": admitted.message,
            "created_at": now,
        }

    async def get_task(self, task_id: str) -> TaskPublic:
        return self._task_public(await self._db(self.store.get_task, task_id))

    async def list_tasks(
        self,
        *,
        phases: Sequence[str] | None = None,
        worker_id: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[TaskPublic], int]:
        rows, count = await self._db(
            self.store.list_tasks, phases=phases, worker_id=worker_id, model=model, limit=limit, offset=offset
        )
        return [self._task_public(row, with_result=False) for row in rows], count

    async def cancel_task(self, task_id: str) -> TaskPublic:
        return await self._db(self._cancel_task, task_id)

    def _cancel_task(self, task_id: str) -> TaskPublic:
        task = to_record(self.store.get_task(task_id))
        if not self._apply(task, lifecycle.cancel(task, now=self._clock())):
            raise ConflictError(f"task {task_id} changed while being cancelled; try again")
        return self._task_public(self.store.get_task(task_id))

    def _task_public(self, row: dict[str, Any], *, with_result: bool = True) -> TaskPublic:
        return task_public(to_record(row), with_result=with_result)

    # workers ------------------------------------------------------------------------------

    async def register_worker(self, request: WorkerRegister) -> WorkerRegistered:
        return await self._db(self._register_worker, request)

    def _register_worker(self, request: WorkerRegister) -> WorkerRegistered:
        now = self._clock()
        for old in self.store.list_workers(_LIVE_WORKER_STATES):
            if old["name"] == request.name:  # names are unique among live workers: the newcomer replaces it
                log.warning("worker %s registered again; its old registration %s is lost", request.name, old["id"])
                self.store.update_worker(old["id"], state="lost")
                why = f"worker {request.name} registered again (its old process is gone)"
                self._release_tasks(old, Reason.WORKER_LOST, why, now)
                self._publish_worker(old["id"])
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
        return await self._db(self._heartbeat, worker_id, beat)

    def _heartbeat(self, worker_id: str, beat: Heartbeat) -> HeartbeatReply:
        worker = self._live_worker(worker_id)
        self.store.update_worker(worker_id, last_heartbeat=self._clock(), stats={**beat.stats, "running": beat.running})
        if worker_id in self._unreachable:  # it is alive: pushes may go to it again, what it was given included
            self._unreachable.discard(worker_id)
            self._placed = True
            self._poke()
        if beat.holding is not None:
            self._recover_lost_pushes(worker, set(beat.holding))
        self._publish_worker(worker_id, "worker.heartbeat")
        interval = self.settings.heartbeat_interval_seconds
        return HeartbeatReply(state=worker["state"], heartbeat_interval_seconds=interval)

    async def complete_tasks(self, worker_id: str, completions: Sequence[TaskCompletion]) -> list[CompletionAnswer]:
        return await self._db(self._complete_tasks, worker_id, completions)

    def _complete_tasks(self, worker_id: str, completions: Sequence[TaskCompletion]) -> list[CompletionAnswer]:
        """Apply a batch of one worker's outcomes in one transaction; each one is answered on its own.

        An outcome of an attempt that is no longer current, or of a task no
        longer there, is refused and the rest still apply; a repeat of one
        already applied is answered ``repeated`` and changes nothing. A
        database error keeps none of the batch (the worker sends it again).
        """
        worker = self._worker_name(worker_id)
        answers: list[CompletionAnswer] = []
        timed: list[tuple[str, str, float]] = []
        with self.store.transaction():
            for done in completions:
                try:
                    status = self._complete_one(done, worker, timed)
                except (ConflictError, NotFoundError) as exc:
                    log.warning("outcome of task %s from worker %s refused: %s", done.task_id, worker, exc)
                    answers.append(CompletionAnswer(task_id=done.task_id, status="refused", detail=str(exc)))
                else:
                    answers.append(CompletionAnswer(task_id=done.task_id, status=status))
        for who, model, model_ms in timed:  # only once committed: a batch rolled back is sent again
            self._observe_model_ms(who, model, model_ms)
        return answers

    def _complete_one(
        self, completion: TaskCompletion, worker: str, timed: list[tuple[str, str, float]]
    ) -> Literal["applied", "repeated"]:
        """Apply one outcome; a successful one applied adds its (worker, model, model time) to ``timed``."""
        task = self.store.get_record(completion.task_id)
        if not lifecycle.check_report(task, worker_id=completion.worker_id, attempt=completion.attempt):
            return "repeated"
        if completion.compute_ms is not None:
            self.metrics.compute_duration.labels(task.model).observe(completion.compute_ms / 1000)
        if completion.error is None:
            outcome = lifecycle.classify(None, worker=worker)
        else:
            error = completion.error
            outcome = lifecycle.Outcome(error.reason, error.message, retryable=error.retryable)
        after = lifecycle.report(
            task, outcome, now=self._clock(), policy=self.retry, rng=self._rng,
            result=completion.result, compute_ms=completion.compute_ms,
        )
        if not self._apply(task, after):
            raise ConflictError(f"task {task.id} changed while its outcome was applied")
        if completion.compute_ms is not None and completion.error is None:  # a fast failure says nothing of it
            timed.append((completion.worker_id, task.model, completion.compute_ms))
        return "applied"

    def _observe_model_ms(self, worker_id: str, model: str, model_ms: float) -> None:
        models = self._model_ms.setdefault(worker_id, {})
        average = models.get(model)
        models[model] = model_ms if average is None else average + LATENCY_SMOOTHING * (model_ms - average)

    def _worker_name(self, worker_id: str) -> str:
        try:
            return str(self.store.get_worker(worker_id)["name"])
        except NotFoundError:
            return worker_id

    async def drain_worker(self, worker_id: str) -> WorkerPublic:
        return await self._db(self._drain_worker, worker_id)

    def _drain_worker(self, worker_id: str) -> WorkerPublic:
        worker = self._live_worker(worker_id)
        self.store.update_worker(worker_id, state="draining")
        rows, _ = self.store.list_tasks(phases=[Phase.SCHEDULED], worker_id=worker_id, limit=10_000)
        why = f"worker {worker['name']} is draining"
        for task in map(to_record, rows):
            self._apply(task, lifecycle.unassign(task, reason=Reason.WORKER_DRAINED, why=why))
        self._publish_worker(worker_id)
        return self._get_worker(worker_id)

    async def deregister_worker(self, worker_id: str) -> WorkerPublic:
        """A worker leaving on purpose: anything it still holds goes back to the queue."""
        return await self._db(self._deregister_worker, worker_id)

    def _deregister_worker(self, worker_id: str) -> WorkerPublic:
        worker = self.store.get_worker(worker_id)
        if worker["state"] in _LIVE_WORKER_STATES:
            self.store.update_worker(worker_id, state="stopped")
            self._release_tasks(worker, Reason.WORKER_DRAINED, f"worker {worker['name']} stopped", self._clock())
            self._publish_worker(worker_id)
        return self._get_worker(worker_id)

    async def list_workers(self) -> list[WorkerPublic]:
        return await self._db(self._list_workers)

    def _list_workers(self) -> list[WorkerPublic]:
        counts = self.store.assigned_counts()
        return [views.worker_public(w, counts) for w in self.store.list_workers()]

    async def get_worker(self, worker_id: str) -> WorkerPublic:
        return await self._db(self._get_worker, worker_id)

    def _get_worker(self, worker_id: str) -> WorkerPublic:
        return views.worker_public(self.store.get_worker(worker_id), self.store.assigned_counts())

    # models and summaries -----------------------------------------------------------------

    async def list_models(self) -> list[ModelPublic]:
        return [ModelPublic.from_card(card) for card in self.repository.list()]

    def snapshot(self) -> dict[str, Any]:
        """Counts for the metrics collector (synchronous, cheap)."""
        return views.snapshot(self.store)

    async def summary(self) -> dict[str, Any]:
        return await self._db(self._summary)

    async def health(self) -> dict[str, Any]:
        """The database's state and the active workers, read on a connection of its own (never queued behind
        the database thread), so health answers while the database is locked."""
        return await asyncio.to_thread(probe, self.settings.database_path)

    def _summary(self) -> dict[str, Any]:
        return views.summary(self.store, self.name, self._clock())

    # events -------------------------------------------------------------------------------

    def _publish_task(self, task_id: str, event_type: str = "task.updated") -> None:
        if not self.events.subscribers:
            return
        task = self._task_public(self.store.get_task(task_id), with_result=False)
        self._on_loop(self.events.publish, event_type, task.model_dump(mode="json", exclude={"history"}))

    def _publish_worker(self, worker_id: str, event_type: str = "worker.updated") -> None:
        if not self.events.subscribers:
            return
        worker = views.worker_public(self.store.get_worker(worker_id), self.store.assigned_counts())
        self._on_loop(self.events.publish, event_type, worker.model_dump(mode="json"))
