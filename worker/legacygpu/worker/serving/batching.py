"""Per-model request queues and dynamic batching, configured like Triton's.

Every real-time request for a model goes through that model's
:class:`ModelScheduler`: a queue per priority level, and one coroutine that
picks the next batch and runs it on the engine's executor, as many batches at
once as the backend runs (``runs``: one on the OpenCL device, two on
onnxruntime, whose second run keeps the CPU's cores busy where one run's
intra-op threads leave them waiting on each other). With ``max_batch_size`` 0 or no
``dynamic_batching`` in the card, each request runs alone, in priority then
arrival order (the queue policy and priority levels of ``dynamic_batching``
still apply when ``max_batch_size`` is 0).

With dynamic batching, the oldest request of the highest priority level
opens a batch; requests whose inputs have the same shape apart from the
first (batch) dimension join it until it holds ``max_batch_size`` items or
a preferred size, or until the opener has waited
``max_queue_delay_microseconds``. While every run slot is busy, new requests
queue, so under load the next batch forms without waiting at all and starts
as soon as a run ends. The batch's inputs
are concatenated along the first dimension and its outputs split back.

With preferred sizes, a batch takes the largest of them that the queue
fills, and the requests left over open the next batch. A backend that
builds a plan per input shape (OpenCL) then meets only those few batch
sizes, instead of building (and, past its plan cache, evicting) a plan for
whatever number of requests the queue happened to hold.

Where a batch runs: on the executor's thread, except when the model's last
run took under :data:`INLINE_SECONDS` and the engine can start it at once
(``try_execute``: the device is free and the model loaded); then it runs on
the event loop itself. For a model that small, handing the batch to another
thread and back costs more than the run: two thread wake-ups, each waiting
for a core when the host is busy, and the GIL passed twice. Under
concurrency that hand-off was the worker's bottleneck on the digits MLP.
Such a model's batches also run one after another, awaited by the batching
loop, not in tasks of their own side by side.

Refusals: a full queue (``max_queue_size``) raises
:class:`~legacygpu.worker.serving.errors.QueueFull` at once; a request
still queued when its timeout (its own ``timeout`` parameter, or the card's
``default_timeout_microseconds``) has passed gets
:class:`~legacygpu.worker.serving.errors.QueueTimeout` when the scheduler
next looks at the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from legacygpu.core.modelcards import DynamicBatchingSpec, ModelCard
from legacygpu.worker.serving.errors import BadRequest, QueueFull, QueueTimeout, ServingError
from legacygpu.worker.serving.metrics import ServingMetrics

__all__ = ["INLINE_SECONDS", "Execute", "ModelScheduler", "Timings", "TryExecute"]

Execute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Runs the model on one (batched) set of feeds; blocking, called on the executor."""
TryExecute = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray] | None]
"""Runs the model at once on the calling thread, or returns None if it cannot start without waiting."""

INLINE_SECONDS = 0.001
"""A model whose last run took less than this runs on the event loop itself (see :class:`ModelScheduler`)."""

_RETRY_AFTER_SECONDS = 1.0


@dataclass
class Timings:
    """Where one request's time went, in seconds."""

    queue: float = 0.0
    compute_input: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0
    batch_size: int = 1


@dataclass(eq=False)  # compared by identity: a generated ``__eq__`` would compare the feeds' arrays
class _Request:
    feeds: dict[str, np.ndarray]
    size: int
    signature: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[tuple[dict[str, np.ndarray], Timings]]
    enqueued: float
    deadline: float | None
    timings: Timings = field(default_factory=Timings)


def _signature(feeds: dict[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    return tuple(sorted((name, tuple(a.shape[1:]), a.dtype.str) for name, a in feeds.items()))


class ModelScheduler:
    """The queue and batcher of one model; lives on the serving event loop."""

    def __init__(self, model: str, card: ModelCard, execute: Execute, executor: Executor,
                 metrics: ServingMetrics, *, try_execute: TryExecute | None = None, runs: int = 1) -> None:
        self.model = model
        self.runs = max(1, runs)
        """Batches that run at once (the executor needs as many threads)."""
        self._running: dict[asyncio.Task[None], list[_Request]] = {}
        self.card = card
        self._execute = execute
        self._try_execute = try_execute
        self._last_run = float("inf")  # seconds the last batch's model run took; unknown yet
        self.inline_below = INLINE_SECONDS
        self.inline_runs = 0
        self._executor = executor
        self._metrics = metrics
        self._queues: list[deque[_Request]] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.configure(card)
        # Read from the queues when scraped, so no change to them can leave the gauge behind.
        metrics.pending.labels(model).set_function(lambda: self.pending)

    # configuration ---------------------------------------------------------------------------

    def configure(self, card: ModelCard) -> None:
        """Apply a (re-read) card; queued requests keep their places."""
        self.card = card
        spec = card.dynamic_batching or DynamicBatchingSpec()
        self.batching: DynamicBatchingSpec | None = card.dynamic_batching if card.max_batch_size > 0 else None
        self.levels = max(1, spec.priority_levels)
        self.default_level = spec.default_priority_level or self.levels
        self.policy = spec.default_queue_policy
        while len(self._queues) < self.levels:
            self._queues.append(deque())

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues)

    # submitting --------------------------------------------------------------------------------

    async def infer(self, feeds: dict[str, np.ndarray], *, size: int, priority: int = 0,
                    timeout_us: int | None = None) -> tuple[dict[str, np.ndarray], Timings]:
        """Queue one request (``size`` items along the first dimension) and wait for its outputs."""
        if self.batching is not None and size > self.card.max_batch_size:
            raise BadRequest(
                f"model {self.model!r}: a request of batch {size} exceeds max_batch_size {self.card.max_batch_size}"
            )
        if priority > self.levels and self.levels > 1:
            raise BadRequest(f"model {self.model!r}: priority {priority} is outside 1..{self.levels}")
        level = min(priority or self.default_level, self.levels)
        if self.policy.max_queue_size and self.pending >= self.policy.max_queue_size:
            raise QueueFull(
                f"model {self.model!r}: the queue is full ({self.policy.max_queue_size} requests wait)",
                retry_after=_RETRY_AFTER_SECONDS,
            )
        timeout = self.policy.default_timeout_microseconds
        if timeout_us and (self.policy.allow_timeout_override or not timeout):
            timeout = timeout_us
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        request = _Request(feeds, size, _signature(feeds), loop.create_future(), now,
                           now + timeout / 1e6 if timeout else None)
        self._queues[level - 1].append(request)
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._loop(), name=f"scheduler-{self.model}")
            self._worker.add_done_callback(self._stopped)
        self._wakeup.set()
        return await request.future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was told by _stopped
                await self._worker
        for task, batch in list(self._running.items()):
            task.cancel()
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(QueueTimeout("the server is shutting down"))
        for queue in self._queues:
            while queue:
                request = queue.popleft()
                if not request.future.done():
                    request.future.set_exception(QueueTimeout("the server is shutting down"))

    def _stopped(self, worker: asyncio.Task[None]) -> None:
        """If the batching loop failed (a bug), the requests it left queued hear why instead of waiting forever."""
        if worker.cancelled() or worker.exception() is None:
            return
        exc = worker.exception()
        error = ServingError(f"model {self.model!r}: the batcher failed: {type(exc).__name__}: {exc}")
        for queue in self._queues:
            while queue:
                request = queue.popleft()
                if not request.future.done():
                    request.future.set_exception(error)

    # the batching loop ---------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for queue in self._queues:
            expired = [r for r in queue if r.deadline is not None and r.deadline <= now]
            if expired:
                kept = [r for r in queue if r.deadline is None or r.deadline > now]
                queue.clear()
                queue.extend(kept)
            for request in expired:
                self._metrics.failure.labels(self.model, "timeout").inc()
                if not request.future.done():
                    request.future.set_exception(
                        QueueTimeout(f"model {self.model!r}: the request's timeout passed while it was queued")
                    )

    def _first(self) -> _Request | None:
        return next((q[0] for q in self._queues if q), None)

    def _batch_ready(self, opener: _Request, now: float) -> bool:
        assert self.batching is not None
        total = sum(r.size for q in self._queues for r in q if r.signature == opener.signature)
        if total >= self.card.max_batch_size or total in self.batching.preferred_batch_size:
            return True
        return now >= opener.enqueued + self.batching.max_queue_delay_microseconds / 1e6

    def _take(self, opener: _Request) -> list[_Request]:
        if self.batching is None:
            for queue in self._queues:
                if queue and queue[0] is opener:
                    queue.popleft()
            return [opener]
        batch: list[_Request] = []
        total = 0
        limit = self._limit(opener)
        for queue in self._queues:
            kept: list[_Request] = []
            for request in queue:
                if request.signature == opener.signature and total + request.size <= limit:
                    batch.append(request)
                    total += request.size
                else:
                    kept.append(request)
            if len(kept) < len(queue):
                queue.clear()
                queue.extend(kept)
        return batch

    def _limit(self, opener: _Request) -> int:
        """The most items the batch opened by ``opener`` takes: ``max_batch_size``, or with preferred sizes the
        largest of them that the queue fills and the opener fits in (the rest open the next batch)."""
        assert self.batching is not None
        limit = self.card.max_batch_size
        queued = sum(r.size for q in self._queues for r in q if r.signature == opener.signature)
        fits = [s for s in self.batching.preferred_batch_size if opener.size <= s <= min(queued, limit)]
        return max(fits) if fits else limit  # the opener always runs, even if larger than every preferred size

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                now = time.monotonic()
                self._expire(now)
                opener = self._first()
                if opener is None or len(self._running) >= self.runs:
                    break  # woken again by the next request or the end of a run
                if self.batching is not None and not self._batch_ready(opener, now):
                    wait = opener.enqueued + self.batching.max_queue_delay_microseconds / 1e6 - now
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout=max(wait, 0.0))
                    self._wakeup.clear()
                    continue
                batch = self._take(opener)
                if self._last_run < self.inline_below:
                    await self._run(batch)  # likely on the loop itself: a task of its own would cost more
                else:
                    self._start(batch)

    def _start(self, batch: list[_Request]) -> None:
        """Run ``batch`` in a task of its own; its end wakes the loop, which then has a free slot."""
        task = asyncio.get_running_loop().create_task(self._run(batch), name=f"batch-{self.model}")
        self._running[task] = batch
        task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[None]) -> None:
        batch = self._running.pop(task, [])
        self._wakeup.set()
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()  # a bug past the model's own failures, which _run tells its requests itself
        error = ServingError(f"model {self.model!r}: the batch failed: {type(exc).__name__}: {exc}")
        for request in batch:
            if not request.future.done():
                request.future.set_exception(error)

    async def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        for request in batch:
            request.timings.queue = started - request.enqueued
        loop = asyncio.get_running_loop()
        try:
            outputs = self._run_inline(batch) if self._last_run < self.inline_below else None
            if outputs is None:
                outputs = await loop.run_in_executor(self._executor, self._run_batch, batch, self._execute)
            assert outputs is not None  # ``execute`` always runs
        except ServingError as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        except Exception as exc:  # the model failed: every request of the batch hears why
            error = ServingError(f"model {self.model!r} failed: {type(exc).__name__}: {exc}")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        for request, result in zip(batch, outputs, strict=True):
            if not request.future.done():
                request.future.set_result((result, request.timings))

    def _run_inline(self, batch: list[_Request]) -> list[dict[str, np.ndarray]] | None:
        """The batch run on the event loop's own thread, or None if the model cannot start at once."""
        if self._try_execute is None:
            return None
        results = self._run_batch(batch, self._try_execute)
        if results is not None:
            self.inline_runs += 1
        return results

    def _run_batch(self, batch: list[_Request], execute: TryExecute) -> list[dict[str, np.ndarray]] | None:
        """Join the batch, run the model, split the outputs (None if ``execute`` declined to run)."""
        t0 = time.perf_counter()
        if len(batch) == 1:
            feeds = batch[0].feeds
        else:
            feeds = {name: np.concatenate([r.feeds[name] for r in batch], axis=0) for name in batch[0].feeds}
        t1 = time.perf_counter()
        outputs = execute(feeds)
        if outputs is None:
            return None
        t2 = time.perf_counter()
        self._last_run = t2 - t1
        total = sum(r.size for r in batch)
        results: list[dict[str, np.ndarray]] = [{} for _ in batch]
        for name, array in outputs.items():
            if len(batch) == 1:
                results[0][name] = array
                continue
            splittable = array.ndim >= 1 and array.shape[0] == total
            offset = 0
            for result, request in zip(results, batch, strict=True):
                result[name] = array[offset : offset + request.size] if splittable else array
                offset += request.size
        t3 = time.perf_counter()
        self._metrics.exec_count.labels(self.model).inc()
        self._metrics.inference_count.labels(self.model).inc(total)
        for request in batch:
            request.timings.compute_input = t1 - t0
            request.timings.compute_infer = t2 - t1
            request.timings.compute_output = t3 - t2
            request.timings.batch_size = total
        return results
