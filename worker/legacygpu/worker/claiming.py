"""Claiming and reporting one attempt of a Kubernetes worker (:mod:`legacygpu.worker.kube`).

A worker runs a ``Scheduled`` task and reports it in one status write; it claims the task
(writes ``Running``) first only for a batch shard, for a task found at the worker's start, or
once the run has lasted :data:`~legacygpu.worker.kube.CLAIM_AFTER` seconds (:class:`ClaimTimer`).
Every write is guarded by the ``resourceVersion`` it read, and whether the attempt is still this
worker's is one question, :meth:`Assignment.standing`, asked of a fresh copy of the task.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from legacygpu.core.kube.contract import TaskStatus, now_utc, running_status
from legacygpu.core.kube.errors import ApiError, ApiUnavailableError
from legacygpu.core.tasks import Phase

__all__ = ["Assignment", "ClaimTimer", "PendingClaim", "TaskApi", "claim", "finish"]

log = logging.getLogger(__name__)

Standing = Literal["scheduled", "running", "reported"]


class TaskApi(Protocol):
    """What claiming needs of the worker: its pod's name and its guarded task reads and writes."""

    pod: str

    def patiently(self, what: str, call: Callable[..., Any], *args: Any) -> Any: ...

    def get_task(self, name: str) -> dict[str, Any] | None: ...

    def patch_status(self, name: str, status: TaskStatus, resource_version: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Assignment:
    """One assignment of a task to a pod: the task's uid, its ``scheduledTime`` and the attempts before it.

    The operator writes a new one each time it places the task, and nothing else changes it (a
    label or an annotation bumps the ``resourceVersion``, not this), so it is what a worker keys
    "have I run this already?" on.
    """

    uid: str
    scheduled_time: str | None
    attempts: int

    @classmethod
    def of(cls, body: dict[str, Any]) -> Assignment:
        status = body.get("status") or {}
        return cls(
            uid=str((body.get("metadata") or {}).get("uid") or ""),
            scheduled_time=status.get("scheduledTime"),
            attempts=int(status.get("attempts") or 0),
        )

    def standing(self, body: dict[str, Any] | None, pod: str) -> Standing | None:
        """Where ``pod``'s attempt of this assignment stands in ``body`` (a fresh read), or None if not ours.

        ``scheduled``: still waiting on ``pod`` by this assignment; ``running``: claimed by ``pod``
        (``Running``, the attempt counted); ``reported``: ended by ``pod``'s own report of it (not
        an operator's release, which records no report). Anything else: the task moved on.
        """
        if body is None or str((body.get("metadata") or {}).get("uid") or "") != self.uid:
            return None
        status = body.get("status") or {}
        attempts = int(status.get("attempts") or 0)
        phase = status.get("phase")
        on_pod = (
            (status.get("workerRef") or {}).get("pod") == pod and status.get("scheduledTime") == self.scheduled_time
        )
        if phase == Phase.SCHEDULED.value and on_pod and attempts == self.attempts:
            return "scheduled"
        if phase == Phase.RUNNING.value and on_pod and attempts == self.attempts + 1:
            return "running"
        history = status.get("history") or []
        last = history[-1] if history else {}
        if (
            phase != Phase.RUNNING.value
            and attempts == self.attempts + 1
            and last.get("attempt") == attempts
            and last.get("worker") == pod
            and bool(last.get("outcome"))
            and last.get("reported") is True
        ):
            return "reported"
        return None


class PendingClaim:
    """The claim of the task running now, written by the :class:`ClaimTimer` once it is due.

    The lock keeps the claim and the report from ever being written at the same time; after
    :meth:`ClaimTimer.settle` no claim starts.
    """

    def __init__(self, body: dict[str, Any], started: datetime.datetime) -> None:
        self.body, self.started = body, started
        self.lock = threading.Lock()
        self.settled = False
        self.attempted = False
        self.claimed: dict[str, Any] | None = None
        self.error: Exception | None = None

    def write(self, claim_it: Callable[..., dict[str, Any] | None]) -> None:
        with self.lock:
            if self.settled:
                return
            self.attempted = True
            try:
                self.claimed = claim_it(self.body, now=self.started)
            except Exception as exc:  # kept: the worker reads the task again to learn what was written
                log.warning("claim of task %s failed: %s", self.body["metadata"].get("name"), exc)
                self.error = exc


class ClaimTimer:
    """One long-lived thread per worker that claims the running task once it has run its delay.

    A worker runs one task at a time, so at most one claim is pending; the thread starts with the
    first claim and sleeps on a condition between them (no thread per task).
    """

    def __init__(self, claim_it: Callable[..., dict[str, Any] | None], name: str) -> None:
        self._claim = claim_it
        self._name = name
        self._cond = threading.Condition()
        self._due: tuple[float, PendingClaim] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, body: dict[str, Any], started: datetime.datetime, delay: float) -> PendingClaim:
        """Claim ``body`` (as started at ``started``) ``delay`` seconds from now unless settled first."""
        pending = PendingClaim(body, started)
        with self._cond:
            self._due = (time.monotonic() + delay, pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return pending

    def settle(self, pending: PendingClaim) -> PendingClaim:
        """No claim of ``pending`` starts after this; one under way is waited for."""
        with self._cond:
            if self._due is not None and self._due[1] is pending:
                self._due = None
        with pending.lock:
            pending.settled = True
        return pending

    def close(self) -> None:
        """End the thread (the worker stops); a claim not yet due is not written."""
        with self._cond:
            self._closed, self._due = True, None
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._due is None and not self._closed:
                    self._cond.wait()
                if self._due is None:
                    return
                due, pending = self._due
                left = due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._due = None
            pending.write(self._claim)


def claim(worker: TaskApi, body: dict[str, Any], *, now: datetime.datetime | None = None) -> dict[str, Any] | None:
    """Scheduled → Running for the worker's pod (started at ``now``); None when the task is no longer ours to run.

    A claim whose answer was lost (the API server went away mid-request) may have been written:
    after such a try, the task read back ``Running`` on this pod by this assignment is ours.
    (Without a lost answer it is not: another process with this pod's name, e.g. a restarted
    container, claimed it.)
    """
    name = body["metadata"]["name"]
    assignment = Assignment.of(body)
    uncertain = False
    current: dict[str, Any] | None = body
    for _ in range(5):
        standing = assignment.standing(current, worker.pod)
        if current is None or standing != "scheduled" or (current.get("spec") or {}).get("cancel"):
            return current if uncertain and standing == "running" else None
        running = running_status(current.get("status") or {}, pod=worker.pod, now=now or now_utc())
        answer, maybe_written = _claim_write(worker, name, running, current["metadata"]["resourceVersion"])
        uncertain = uncertain or maybe_written
        if answer is not None:
            return answer
        current = worker.patiently(f"read {name}", worker.get_task, name)
    return None


def _claim_write(
    worker: TaskApi, name: str, running: TaskStatus, version: str
) -> tuple[dict[str, Any] | None, bool]:
    """The claim's write: (the answer, or None on 409; whether a try without an answer was made)."""
    try:
        return worker.patch_status(name, running, version), False
    except ApiUnavailableError:
        pass
    except ApiError as exc:
        if exc.status != 409:
            raise
        return None, False
    try:
        return worker.patiently(f"claim {name}", worker.patch_status, name, running, version), True
    except ApiError as exc:
        if exc.status != 409:
            raise
        return None, True


def finish(worker: TaskApi, body: dict[str, Any], build: Any, *, claimed: bool = True) -> bool:
    """Write ``build(status, created)`` if the attempt is still current; whether it was written.

    ``claimed``: ``body`` is the claim's answer and the attempt is current while the task is
    ``Running`` on this pod by that claim; else ``body`` is the assignment the worker ran
    unclaimed, current while the task is still ``Scheduled`` on this pod by that assignment. The
    first try writes against ``body``'s resourceVersion (nothing else touches a running task in
    the common case); a 409 means something did, so the task is read again and the attempt
    checked before trying once more.
    """
    name = body["metadata"]["name"]
    assignment = Assignment.of(body)
    if claimed:  # the claim's answer already counts this attempt
        assignment = Assignment(assignment.uid, assignment.scheduled_time, assignment.attempts - 1)
    wanted: Standing = "running" if claimed else "scheduled"
    current: dict[str, Any] | None = body
    for _ in range(5):
        if current is None:
            log.info("task %s was deleted while it ran; result dropped", name)
            return False
        status = current.get("status") or {}
        if assignment.standing(current, worker.pod) != wanted:
            log.info(
                "task %s attempt %d is stale (now %s, attempt %s); result dropped",
                name, assignment.attempts + 1, status.get("phase"), status.get("attempts"),
            )
            return False
        report = build(status, current["metadata"].get("creationTimestamp"))
        version = current["metadata"]["resourceVersion"]
        try:
            worker.patiently(f"report {name}", worker.patch_status, name, report, version)
            return True
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        current = worker.patiently(f"read {name}", worker.get_task, name)
        if assignment.standing(current, worker.pod) == "reported":
            return True  # an earlier try was written, its answer lost with the API server
    return False
