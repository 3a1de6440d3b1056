"""``/cluster/workers``: registration, heartbeats and outcomes from workers; listing and draining for users.

Workers never ask for tasks: the coordinator pushes them to each worker's
task endpoint (:mod:`legacygpu.api.backends.local.channel`).

Registering takes the join token (or the admin token); everything a worker
does after that (heartbeat, completions, deregister) takes the worker's own token
from the registration reply; draining or removing a worker takes the admin
token; listing takes the API token (see :mod:`legacygpu.api.deps`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.api.deps import (
    AdminAuthorized,
    Authorized,
    BackendDep,
    JoinAuthorized,
    SettingsDep,
    WorkerAuthorized,
    WorkerOrAdminAuthorized,
    worker_token,
)
from legacygpu.api.errors import ERROR_RESPONSES
from legacygpu.api.schemas import (
    CompletionBatch,
    CompletionsAnswered,
    Heartbeat,
    HeartbeatReply,
    WorkerPublic,
    WorkerRegister,
    WorkerRegistered,
    WorkersPublic,
)
from legacygpu.core.config import Settings
from legacygpu.core.limits import check_json

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/cluster/workers", tags=["workers"], responses=ERROR_RESPONSES
)


def _check_stats(stats: dict[str, Any], settings: Settings) -> None:
    """Stats are stored and shown to every reader of the worker list: bounded before they are stored."""
    limits = settings.limits
    check_json("stats", stats, max_depth=limits.max_json_depth, max_bytes=limits.max_stats_bytes,
               setting="LEGACYGPU_MAX_STATS_BYTES")


@router.post("/register", status_code=status.HTTP_201_CREATED, dependencies=[JoinAuthorized])
async def register_worker(
    body: WorkerRegister, backend: BackendDep, settings: SettingsDep, request: Request
) -> WorkerRegistered:
    """A worker joins the cluster and gets its id and its own token (for heartbeats, results and leaving)."""
    _check_stats(body.stats, settings)
    registered = await backend.register_worker(body)
    return registered.model_copy(update={"token": worker_token(request.app.state.worker_secret, registered.id)})


@router.get("", dependencies=[Authorized])
async def list_workers(backend: BackendDep) -> WorkersPublic:
    workers = await backend.list_workers()
    return WorkersPublic(data=workers, count=len(workers))


@router.get("/{worker_id}", dependencies=[Authorized])
async def get_worker(worker_id: str, backend: BackendDep) -> WorkerPublic:
    return await backend.get_worker(worker_id)


@router.get("/{worker_id}/stats", dependencies=[Authorized])
async def get_worker_stats(worker_id: str, backend: BackendDep) -> dict[str, Any]:
    """The worker's latest reported figures plus its task counters."""
    worker = await backend.get_worker(worker_id)
    return {
        **worker.stats,  # what the worker last reported; the coordinator's own figures below win
        "id": worker.id,
        "name": worker.name,
        "state": worker.state,
        "device": worker.device,
        "assigned": worker.assigned,
        "tasks_succeeded": worker.tasks_succeeded,
        "tasks_failed": worker.tasks_failed,
        "last_heartbeat": worker.last_heartbeat,
    }


@router.post("/{worker_id}/heartbeat", dependencies=[WorkerAuthorized])
async def heartbeat(worker_id: str, body: Heartbeat, backend: BackendDep, settings: SettingsDep) -> HeartbeatReply:
    """Worker-facing: I am alive, here are my stats. The reply says whether to keep taking work."""
    _check_stats(body.stats, settings)
    return await backend.heartbeat(worker_id, body)


@router.post("/{worker_id}/completions", dependencies=[WorkerAuthorized])
async def complete_tasks(worker_id: str, body: CompletionBatch, backend: BackendDep) -> CompletionsAnswered:
    """Worker-facing: the outcomes of tasks the coordinator pushed to me, several at once.

    The batch is applied in one transaction. Each outcome is answered on its
    own: an outcome of an attempt that is no longer current (the task was
    retried elsewhere, cancelled, expired) or of a task no longer there is
    ``refused`` and the others still apply; sending the same outcome again is
    ``repeated`` and changes nothing, so a worker may resend a batch whose
    answer it did not get.
    """
    return await complete(worker_id, body, backend)


async def complete(worker_id: str, batch: CompletionBatch, backend: ClusterBackend) -> CompletionsAnswered:
    """What ``POST /{worker_id}/completions`` does once the worker is authorised and the body parsed: the
    route's body, and :mod:`legacygpu.api.taskpath`'s, which answers the common case without FastAPI (so the
    two cannot differ). 403 for an outcome reported as another worker."""
    for done in batch.completed:
        if done.worker_id != worker_id:  # this worker's token vouches for this worker's outcomes only
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"worker {worker_id} reported an outcome as worker {done.worker_id}: a worker may report only "
                "its own outcomes",
            )
    return CompletionsAnswered(data=await backend.complete_tasks(worker_id, batch.completed))


@router.post("/{worker_id}/drain", dependencies=[AdminAuthorized])
async def drain_worker(worker_id: str, backend: BackendDep) -> WorkerPublic:
    """Stop giving the worker new tasks; it finishes what it runs, then exits."""
    return await backend.drain_worker(worker_id)


@router.delete("/{worker_id}", dependencies=[WorkerOrAdminAuthorized])
async def deregister_worker(worker_id: str, backend: BackendDep) -> WorkerPublic:
    """The worker leaving now, or an administrator removing it: whatever it still holds goes back to the queue."""
    return await backend.deregister_worker(worker_id)
