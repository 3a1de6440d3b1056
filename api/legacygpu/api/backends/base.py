"""The seam between the REST routes and where the cluster's state lives.

Two implementations: :class:`legacygpu.api.backends.local.LocalBackend`
(SQLite and worker processes on this machine) and the Kubernetes backend
(custom resources, in ``legacygpu.api.backends.kubernetes``). Routes only
ever talk to a :class:`ClusterBackend`, and both return the same schemas
from :mod:`legacygpu.api.schemas`, so the CLI works unchanged against
either.

Errors: methods raise the core's errors (``NotFoundError``,
``ValidationError``, ``UnknownModelError``, ``ConflictError``); the app
maps them to 404/422/409. Worker-facing methods are only meaningful for
backends whose workers talk to the facade (local); others raise
``ConflictError`` saying where workers register instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from legacygpu.api.events import EventBus
from legacygpu.api.schemas import (
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

__all__ = ["ClusterBackend"]


class ClusterBackend(Protocol):
    """What the facade needs from a cluster."""

    name: str
    events: EventBus

    async def start(self) -> None:
        """Begin background work (scheduling, watches)."""

    async def stop(self) -> None:
        """End background work; idempotent."""

    # tasks
    async def submit_task(self, request: TaskCreate) -> TaskPublic: ...
    async def submit_tasks(self, requests: Sequence[TaskCreate]) -> list[TaskPublic]:
        """Several tasks, each checked as :meth:`submit_task` checks one; an error names ``tasks[i]``."""
    async def get_task(self, task_id: str) -> TaskPublic: ...
    async def list_tasks(
        self, *, phases: Sequence[str] | None, worker_id: str | None, model: str | None, limit: int, offset: int
    ) -> tuple[list[TaskPublic], int]: ...
    async def cancel_task(self, task_id: str) -> TaskPublic: ...

    # workers
    async def list_workers(self) -> list[WorkerPublic]: ...
    async def get_worker(self, worker_id: str) -> WorkerPublic: ...
    async def drain_worker(self, worker_id: str) -> WorkerPublic: ...

    # models
    async def list_models(self) -> list[ModelPublic]: ...

    # summaries
    async def summary(self) -> dict[str, Any]:
        """Tasks by phase, workers by state, throughput and latency percentiles."""

    # worker-facing (local mode)
    async def register_worker(self, request: WorkerRegister) -> WorkerRegistered: ...
    async def heartbeat(self, worker_id: str, beat: Heartbeat) -> HeartbeatReply: ...
    async def complete_tasks(self, worker_id: str, completions: Sequence[TaskCompletion]) -> list[CompletionAnswer]:
        """A batch of the worker's outcomes, applied together; each answered on its own."""
    async def deregister_worker(self, worker_id: str) -> WorkerPublic: ...
