"""The local worker process: register, heartbeat, claim, run, report.

A worker needs no inbound connection. It registers with the facade, sends a
heartbeat with real stats every few seconds from a side thread, and
long-polls for the tasks the coordinator assigned to it. Each task runs
through :class:`~legacygpu.worker.runner.TaskRunner`; its outcome goes back
with the attempt number, so a result that arrives after the coordinator gave
up on this attempt is refused rather than applied twice. Outcomes ride on the
next claim (its body), so a busy worker pays one round trip per task, not
two; whatever is still unsent when the worker stops or loses its
registration is posted on its own (``POST /cluster/tasks/{id}/complete``).

Stopping: ``drain`` (from ``legacygpu worker stop`` via the facade, seen in a
heartbeat reply) and SIGTERM/SIGINT both mean "finish what you are running,
take nothing new, deregister, exit 0". If the facade forgets the worker (it
was marked lost, or the database was replaced) the worker registers again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from legacygpu.core.lifecycle import classify
from legacygpu.core.modelcards import ModelRepository
from legacygpu.core.scheduling import WorkerStats
from legacygpu.worker.backends import create_backend
from legacygpu.worker.runner import TaskRunner, preload_from_env

__all__ = ["LocalWorker"]

log = logging.getLogger(__name__)

_CLAIM_WAIT_SECONDS = 5.0


class _Gone(Exception):
    """The facade no longer knows this worker; register again."""


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
            timeout=httpx.Timeout(10.0, read=_CLAIM_WAIT_SECONDS + 10.0),
        )
        self.worker_id: str | None = None
        self.heartbeat_interval = 2.0
        self.stop_requested = threading.Event()
        self.draining = threading.Event()
        self.running = 0
        self._stats = WorkerStats()
        self._unsent: list[dict[str, Any]] = []
        """Outcomes waiting for the next claim."""
        self._started = time.time()
        self._process = _own_process()
        self.serving: dict[str, str] | None = None
        """Where this worker answers the Open Inference Protocol (``rest``, ``grpc``); sent with its stats."""

    @property
    def runner(self) -> TaskRunner | None:
        """The task runner, once registration has named the model repository."""
        return self._runner

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
            return
        self.worker_id = reply["id"]
        if reply.get("token"):
            self._http.headers["Authorization"] = f"Bearer {reply['token']}"
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
                    json={"running": self.running, "stats": self.stats()},
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
        self._register()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stop_requested.is_set() and not self.draining.is_set():
                if self.worker_id is None:
                    self._register()
                    continue
                asked = time.monotonic()
                sending, self._unsent = self._unsent, []
                try:
                    tasks = self._call(
                        "POST",
                        f"/cluster/workers/{self.worker_id}/claim",
                        params={"max_tasks": 1, "wait": _CLAIM_WAIT_SECONDS},
                        json={"completed": sending},
                    )
                except _Gone:
                    self._report_each(sending)
                    self.worker_id = None
                    continue
                except httpx.TransportError as exc:
                    self._unsent = sending + self._unsent  # not delivered: they go with the next claim
                    log.warning("claim failed: %s", exc)
                    self.stop_requested.wait(1.0)
                    continue
                except httpx.HTTPError as exc:
                    self._report_each(sending)  # refused as a batch: each goes on its own and says why
                    log.warning("claim failed: %s", exc)
                    self.stop_requested.wait(1.0)
                    continue
                if not tasks and time.monotonic() - asked < _CLAIM_WAIT_SECONDS / 2:
                    # An early empty answer: we are draining and the heartbeat will say so shortly.
                    self.stop_requested.wait(0.5)
                for task in tasks:
                    self._run_task(task)
        finally:
            self.stop_requested.set()
            self._report_each(self._unsent)
            self._unsent = []
            self._deregister()
            self._http.close()
        return 0

    def _run_task(self, task: dict[str, Any]) -> None:
        assert self._runner is not None
        self.running += 1
        body: dict[str, Any] = {"worker_id": self.worker_id, "attempt": task["attempt"]}
        error: Exception | None = None
        try:
            body["result"] = self._runner.run(task["model"], task["inputs"], task["parameters"])
            body["compute_ms"] = self._runner.last_compute_ms
        except Exception as exc:  # classified below: only this worker's own trouble is retried
            error = exc
        finally:
            self.running -= 1
        outcome = classify(error, worker=self.name)
        if outcome.retryable:
            log.error("task %s failed unexpectedly", task["id"], exc_info=error)
        if not outcome.succeeded:
            body.pop("result", None)
            body["error"] = {"reason": outcome.reason, "message": outcome.message, "retryable": outcome.retryable}
        self._stats = self._stats.observe(ok=outcome.succeeded, latency_ms=body.get("compute_ms"))
        self._unsent.append({"task_id": task["id"], **body})

    def _report_each(self, outcomes: list[dict[str, Any]]) -> None:
        for outcome in outcomes:
            body = dict(outcome)
            self._report(body.pop("task_id"), body)

    def _report(self, task_id: str, body: dict[str, Any]) -> None:
        """Post an outcome, retrying while the facade is unreachable (it may be restarting)."""
        delay = 0.2
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                response = self._http.post(f"/cluster/tasks/{task_id}/complete", json=body)
            except httpx.TransportError as exc:
                log.warning("cannot report task %s yet (%s); retrying", task_id, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if response.status_code == 409:
                log.warning("result of task %s discarded by the coordinator: %s", task_id, response.json()["detail"])
            elif response.is_error:
                log.error("reporting task %s failed: %s %s", task_id, response.status_code, response.text)
            return
        log.error("gave up reporting task %s", task_id)

    def _deregister(self) -> None:
        if self.worker_id is None:
            return
        try:
            self._http.delete(f"/cluster/workers/{self.worker_id}")
            log.info("worker %s deregistered", self.worker_id)
        except httpx.HTTPError as exc:
            log.warning("deregistering failed: %s", exc)
