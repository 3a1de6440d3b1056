"""The local worker process: register, heartbeat, take pushed tasks, run, report in batches.

The worker never asks for work. It registers with the facade (announcing its
serving endpoint), and the coordinator pushes the tasks it assigns to the
worker's task endpoint on that port (:mod:`legacygpu.worker.taskchannel`),
several per request; they wait in the :class:`~legacygpu.worker.taskchannel.Inbox`
and run one at a time through :class:`~legacygpu.worker.runner.TaskRunner`.
Outcomes go back with their attempt number, so a result that arrives after
the coordinator gave up on this attempt is refused rather than applied twice.
A sender thread posts them in batches (``POST
/cluster/workers/{id}/completions``, on a lean kept-alive connection of its
own: :mod:`legacygpu.worker.poster`): whatever finished while the previous
batch was on its way goes in the next request, so a busy worker pays far less
than a round trip per task. A lone task pushed to an idle worker skips all of
that when it is quick: it runs before the push is answered, and its outcome
goes back in the answer (:meth:`LocalWorker.run_now`). A heartbeat with real stats and the ids of the
tasks it holds goes out every few seconds from a side thread.

Stopping: ``drain`` (from ``legacygpu worker stop`` via the facade, seen in a
heartbeat reply) and SIGTERM/SIGINT both mean "take nothing new, finish the
tasks already pushed to me, report them, deregister, exit 0". If the facade
forgets the worker (it was marked lost, or the database was replaced) the
worker registers again and drops what it held for its old registration (the
facade has put those back in the queue).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from legacygpu.core.lifecycle import classify
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.scheduling import WorkerStats
from legacygpu.worker.backends import create_backend
from legacygpu.worker.poster import JsonPoster, PostError
from legacygpu.worker.runner import TaskRunner, preload_from_env
from legacygpu.worker.taskchannel import Inbox, task_routes

__all__ = ["LocalWorker"]

log = logging.getLogger(__name__)

_BATCH_MAX = 256
"""Outcomes per request at most (the facade's limit)."""
_REPORT_GIVE_UP_SECONDS = 120.0


INLINE_TASK_SECONDS = 0.002
"""A pushed task may run in the push's answer only when its model's last successful task here took less than
this (and the worker is idle, the model loaded: :meth:`LocalWorker.run_now`): the serving loop answers nothing
else meanwhile. It is timed run to outcome (inputs decoded, result formed), where the ``/v2`` batcher's
:data:`~legacygpu.worker.serving.batching.INLINE_SECONDS` times the model's run alone."""


_ALSO_REPORT_SECONDS = 1.0
"""A task run at once that took this long is also reported the usual way: the facade waits 10 s for a push's
answer (:mod:`legacygpu.api.backends.local.channel`), and an outcome it never got would make it run the task
again."""


class _Gone(Exception):
    """The facade no longer knows this worker; register again."""


class _Declined(Exception):
    """The runner could not start the task at once: it waits in the inbox instead."""


def _own_process() -> Any:
    """This process as psutil sees it, or None: psutil is in the worker extra, and stats stay partial without it."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process()


class LocalWorker:
    """One worker process attached to a facade over HTTP."""

    def __init__(
        self,
        *,
        api_url: str,
        token: str,
        backend: str = "auto",
        device_index: int | None = None,
        name: str | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.backend = create_backend(backend, device_index)
        self._model_dir = model_dir
        self._runner: TaskRunner | None = None
        self._token = token  # the join token registers; the worker's own token (from the reply) does the rest
        self._http = httpx.Client(
            base_url=api_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=30.0),
        )
        self._poster = JsonPoster(api_url.rstrip("/"), timeout=30.0)
        """The outcomes' connection (the sender thread's alone)."""
        self.worker_id: str | None = None
        self.heartbeat_interval = 2.0
        self.stop_requested = threading.Event()
        self.draining = threading.Event()
        self.running = 0
        self._running_lock = threading.Lock()
        """Guards ``running`` and the stats: the task loop and the serving loop (:meth:`run_now`) both run tasks."""
        self._stats = WorkerStats()
        self.inbox = Inbox()
        """Tasks the coordinator pushed here, waiting to run."""
        self._task_seconds: dict[str, float] = {}
        """How long each model's last successful task here took, run to outcome (what :meth:`run_now` goes by)."""
        self._outcomes: list[dict[str, Any]] = []
        """Outcomes waiting for the sender thread."""
        self._outcome_ready = threading.Condition()
        self._finished = threading.Event()
        self._started = time.time()
        self._process = _own_process()
        self.serving: dict[str, str] | None = None
        """Where this worker answers the Open Inference Protocol (``rest``, ``grpc``); sent with its stats."""

    @property
    def runner(self) -> TaskRunner | None:
        """The task runner, once registration has named the model repository."""
        return self._runner

    def routes(self) -> list[Any]:
        """The task channel's route, for the serving app (the worker's tasks arrive on its serving port)."""
        return task_routes(self.inbox, self.run_now)

    # HTTP ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code in (404, 409) and "/workers/" in path:  # this worker is unknown or not live
            raise _Gone(response.text)
        response.raise_for_status()
        return response.json() if response.content else None

    def _register(self) -> None:
        info = self.backend.info()
        body = {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": {
                "name": info.device,
                "type": info.device_type,
                "backend": info.backend,
                "vram_mib": info.vram_mib,
                "gpu_family": info.gpu_family,
            },
            "concurrency": 1,
            "stats": self.stats(),
        }
        delay = 0.2
        self.inbox.registering()
        while not self.stop_requested.is_set():
            try:
                reply = self._call("POST", "/cluster/workers/register", json=body,
                                   headers={"Authorization": f"Bearer {self._token}"})
                break
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                log.warning("cannot register with the facade yet (%s); retrying in %.1fs", exc, delay)
                self.stop_requested.wait(delay)
                delay = min(delay * 2, 5.0)
        else:
            self.inbox.close()
            return
        self.worker_id = reply["id"]
        if reply.get("token"):
            self._http.headers["Authorization"] = f"Bearer {reply['token']}"
        self.inbox.open(reply["id"], reply.get("token") or self._token)
        self.heartbeat_interval = reply["heartbeat_interval_seconds"]
        if self._runner is None:
            model_dir = self._model_dir or Path(reply["model_repository"])
            self._runner = TaskRunner(ModelRepository(model_dir), self.backend)
            preload_from_env(self._runner)
        log.info("worker %s registered as %s on %s (%s)", self.name, self.worker_id, info.device, info.backend)

    def stats(self) -> dict[str, Any]:
        loaded = tuple(self._runner.loaded_models()) if self._runner else ()
        stats: dict[str, Any] = {
            **dataclasses.replace(self._stats, models=loaded).to_local(),
            "uptime_seconds": round(time.time() - self._started, 1),
        }
        if self.serving:
            stats["serving"] = self.serving
        if self._process is not None:
            stats["memory_rss_bytes"] = self._process.memory_info().rss
            # Since the previous call on this same object (the first call says 0.0).
            stats["cpu_percent"] = self._process.cpu_percent(interval=None)
        return stats

    # loops --------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self.stop_requested.wait(self.heartbeat_interval):
            if self.worker_id is None:
                continue
            try:
                reply = self._call(
                    "POST",
                    f"/cluster/workers/{self.worker_id}/heartbeat",
                    json={"running": self.running, "stats": self.stats(), "holding": self.inbox.held()},
                )
                if reply["state"] == "draining" and not self.draining.is_set():
                    log.info("worker %s is draining: finishing running tasks, taking no new ones", self.name)
                    self.draining.set()
            except _Gone:
                log.warning("the facade no longer knows worker %s; registering again", self.worker_id)
                self.worker_id = None
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)

    def run(self) -> int:
        """Work until drained or asked to stop; returns the process exit code."""
        if not self.serving:
            log.error("worker %s has no serving endpoint: its tasks are pushed there, so it cannot take any",
                      self.name)
            return 2
        self._register()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        sender = threading.Thread(target=self._sender_loop, name="completions", daemon=True)
        beat.start()
        sender.start()
        try:
            while True:
                if self.stop_requested.is_set() or self.draining.is_set():
                    self.inbox.close()  # nothing new; what was pushed already still runs
                    with self._running_lock:  # run_now reserves under it: nothing starts after this check
                        if self.inbox.empty() and not self.running:  # a task run in a push's answer included
                            break
                if self.worker_id is None:
                    self._register()
                    continue
                task = self.inbox.get(timeout=0.2)
                if task is not None:
                    self._run_task(task)
        finally:
            self.stop_requested.set()
            self.inbox.close()
            self._finished.set()
            with self._outcome_ready:
                self._outcome_ready.notify()
            sender.join(timeout=_REPORT_GIVE_UP_SECONDS + 10)
            self._deregister()
            self._http.close()
            self._poster.close()
        return 0

    def _run_task(self, task: dict[str, Any]) -> None:
        assert self._runner is not None
        runner = self._runner

        def run() -> tuple[dict[str, Any], float | None]:
            result = runner.run(task["model"], task["inputs"], task["parameters"])
            return result, runner.last_compute_ms

        self._reserve()
        self._report(self._outcome(task, run))

    def _report(self, outcome: dict[str, Any]) -> None:
        """Hand ``outcome`` to the sender thread."""
        with self._outcome_ready:
            self._outcomes.append(outcome)
            self._outcome_ready.notify()

    def run_now(self, task: dict[str, Any]) -> dict[str, Any] | None:
        """Run a pushed task at once, on the calling thread (the serving loop), and return its outcome; None when
        it must wait in the inbox instead.

        A lone task on an idle worker is answered in the push's own answer (:mod:`legacygpu.worker.taskchannel`):
        no hand-off to the task loop, none to the sender, no request of its own for the outcome. Only when
        nothing is queued or running here, the worker takes pushes (it is not draining or stopping), the model is
        loaded and a run can start without waiting, and the
        model's last successful task here took under :data:`INLINE_TASK_SECONDS` (the loop answers nothing
        else meanwhile): a model not yet timed here, or a slow one, waits in the inbox.
        """
        runner = self._runner
        if (runner is None or self.worker_id is None
                or self._task_seconds.get(task["model"], INLINE_TASK_SECONDS) >= INLINE_TASK_SECONDS):
            return None  # (no worker id: the facade forgot this worker, and an outcome would name none)
        if not self._reserve(only_if_idle=True):
            return None

        def run() -> tuple[dict[str, Any], float | None]:
            ran = runner.try_run(task["model"], task["inputs"], task["parameters"])
            if ran is None:
                raise _Declined
            return ran

        started = time.perf_counter()
        try:
            outcome = self._outcome(task, run)
        except _Declined:
            return None
        if time.perf_counter() - started >= _ALSO_REPORT_SECONDS:
            # Unexpectedly long (an input this model is slow on): the facade may have stopped waiting for the
            # answer, so the outcome goes the usual way too (the copy that comes second is answered
            # ``repeated``, or refused if the first put the task back in the queue).
            self._report(outcome)
        return outcome

    def _reserve(self, *, only_if_idle: bool = False) -> bool:
        """Count one more task in ``running`` (:meth:`_outcome` counts it out); with ``only_if_idle``, only when
        nothing is queued or running and the worker takes pushes, checked and counted at once.

        Under the lock the task loop's stop check takes: a stopping worker (its inbox closed, nothing running)
        deregisters, and the facade takes back what it held, so a task started after that check would run twice.
        """
        with self._running_lock:
            if only_if_idle and (self.running or not self.inbox.empty() or not self.inbox.accepting):
                return False
            self.running += 1
            return True

    def _outcome(self, task: dict[str, Any], run: Callable[[], tuple[dict[str, Any], float | None]]) -> dict[str, Any]:
        """``task``'s outcome, as the facade takes it: ``run`` gives its result and model time, or raises. The task
        was counted in ``running`` by :meth:`_reserve`; it is counted out here, however it ends."""
        body: dict[str, Any] = {"task_id": task["id"], "worker_id": self.worker_id, "attempt": task["attempt"]}
        error: Exception | None = None
        started = time.perf_counter()
        try:
            body["result"], body["compute_ms"] = run()
        except _Declined:
            raise
        except Exception as exc:  # classified below: only this worker's own trouble is retried
            error = exc
        finally:
            with self._running_lock:
                self.running -= 1
        if error is None:  # a failure (a bad input refused at once, say) says nothing of the model's time
            self._task_seconds[task["model"]] = time.perf_counter() - started
        outcome = classify(error, worker=self.name)
        if outcome.retryable:
            log.error("task %s failed unexpectedly", task["id"], exc_info=error)
        if not outcome.succeeded:
            body.pop("result", None)
            body["error"] = {"reason": outcome.reason, "message": outcome.message, "retryable": outcome.retryable}
        with self._running_lock:
            self._stats = self._stats.observe(ok=outcome.succeeded, latency_ms=body.get("compute_ms"))
        return body

    def _sender_loop(self) -> None:
        """Post outcomes as they come: one request for all that finished while the last one was on its way."""
        while True:
            with self._outcome_ready:
                while not self._outcomes and not self._finished.is_set():
                    self._outcome_ready.wait(1.0)
                batch, self._outcomes = self._outcomes[:_BATCH_MAX], self._outcomes[_BATCH_MAX:]
            if not batch:
                return  # finished, and nothing left to send
            try:
                self._send(batch)
            except Exception:  # the sender must outlive any one batch: later outcomes still go out
                log.exception("reporting %d outcome(s) failed unexpectedly; they are dropped", len(batch))
                self.inbox.done([o["task_id"] for o in batch])

    def _send(self, batch: list[dict[str, Any]]) -> None:
        """Post one batch, retrying while the facade is unreachable (it may be restarting)."""
        ids = [o["task_id"] for o in batch]
        worker_id = batch[0]["worker_id"]
        if worker_id != self.worker_id or any(o["worker_id"] != worker_id for o in batch):
            # Outcomes of an earlier registration: the facade put those tasks back in the queue already.
            log.warning("dropping %d outcome(s) of an earlier registration", len(batch))
            self.inbox.done(ids)
            return
        delay = 0.2
        deadline = time.monotonic() + _REPORT_GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            try:
                status, content = self._poster.post(f"/cluster/workers/{worker_id}/completions",
                                                    {"completed": batch},
                                                    {"Authorization": self._http.headers["Authorization"]})
            except PostError as exc:
                status, content = 0, str(exc).encode()
            if status in (0, 503):  # unreachable, or its database busy: the outcomes wait, none is lost
                log.warning("cannot report %d outcome(s) yet (%s); retrying", len(batch),
                            content[:200].decode(errors="replace"))
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if status in (404, 409):  # this worker is unknown or not live
                log.warning("the facade no longer knows worker %s: %d outcome(s) dropped (%s)", worker_id,
                            len(batch), content[:200].decode(errors="replace"))
            elif status >= 300:
                log.error("reporting %d outcome(s) failed: %d %s", len(batch), status,
                          content[:200].decode(errors="replace"))
            else:
                self._log_refused(content)
            self.inbox.done(ids)
            return
        log.error("gave up reporting tasks %s", ", ".join(ids))
        self.inbox.done(ids)

    @staticmethod
    def _log_refused(content: bytes) -> None:
        """Log the outcomes the coordinator's answer says it refused (an unreadable answer is logged instead)."""
        try:
            refused = [(d["task_id"], d["detail"]) for d in json.loads(content)["data"] if d["status"] == "refused"]
        except (ValueError, KeyError, TypeError) as exc:  # a 2xx from something other than the facade
            log.error("the answer to reported outcomes is not the facade's (%s: %s): %s", type(exc).__name__, exc,
                      content[:200].decode(errors="replace"))
            return
        for task_id, detail in refused:
            log.warning("result of task %s discarded by the coordinator: %s", task_id, detail)

    def _deregister(self) -> None:
        if self.worker_id is None:
            return
        try:
            self._http.delete(f"/cluster/workers/{self.worker_id}")
            log.info("worker %s deregistered", self.worker_id)
        except httpx.HTTPError as exc:
            log.warning("deregistering failed: %s", exc)
