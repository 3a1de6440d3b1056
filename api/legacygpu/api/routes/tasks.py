"""``/cluster/tasks``: submit, follow, list and cancel inference tasks (workers report at ``/cluster/workers``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from legacygpu.api.backends.base import ClusterBackend
from legacygpu.api.deps import Authorized, BackendDep, SettingsDep
from legacygpu.api.errors import ERROR_RESPONSES
from legacygpu.api.schemas import INT64_MAX, TaskCreate, TaskPublic, TasksCreate, TasksPublic
from legacygpu.core.config import Settings
from legacygpu.core.errors import ValidationError
from legacygpu.core.limits import check_json
from legacygpu.core.tasks import Phase
from legacygpu.core.tensors import check_limits

router = APIRouter(
    prefix="/cluster/tasks", tags=["tasks"], responses=ERROR_RESPONSES
)


@router.post("/submit", status_code=status.HTTP_201_CREATED, dependencies=[Authorized])
async def submit_task(body: TaskCreate, backend: BackendDep, settings: SettingsDep) -> TaskPublic:
    """Accept a task after checking it is within the limits, the model exists and the inputs fit it."""
    return await submit(body, backend, settings)


async def submit(task: TaskCreate, backend: ClusterBackend, settings: Settings) -> TaskPublic:
    """What ``POST /submit`` does once the caller is authorised and the body parsed: the route's body, and
    :mod:`legacygpu.api.taskpath`'s, which answers the common case without FastAPI (so the two cannot differ)."""
    check_task_limits(task, settings)
    return await backend.submit_task(task)


@router.post("/submit-many", status_code=status.HTTP_201_CREATED, dependencies=[Authorized])
async def submit_tasks(body: TasksCreate, backend: BackendDep, settings: SettingsDep) -> TasksPublic:
    """Accept several tasks in one request: each checked as ``/submit`` checks one, all stored or none.

    An error names the task by its place in ``tasks`` (``tasks[3]: ...``); the answer lists the
    tasks in the order given.
    """
    for i, task in enumerate(body.tasks):
        try:
            check_task_limits(task, settings)
        except ValidationError as exc:  # the same kind (and status), saying which task
            raise type(exc)(f"tasks[{i}]: {exc}") from exc
    data = await backend.submit_tasks(body.tasks)
    return TasksPublic(data=data, count=len(data))


def check_task_limits(task: TaskCreate, settings: Settings) -> None:
    """The request limits a task's ``parameters`` and inputs must keep (413 or 422 otherwise)."""
    limits = settings.limits
    check_json("parameters", task.parameters, max_depth=limits.max_json_depth,
               max_bytes=limits.max_parameters_bytes, setting="LEGACYGPU_MAX_PARAMETERS_BYTES")
    check_limits(task.inputs, limits)


@router.get("", dependencies=[Authorized])
async def list_tasks(
    backend: BackendDep,
    phase: Annotated[list[Phase] | None, Query(description="Only these phases (repeatable).")] = None,
    worker: Annotated[str | None, Query(description="Only tasks assigned to this worker id.")] = None,
    model: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> TasksPublic:
    """Tasks, newest first, without their results."""
    phases = [str(p) for p in phase] if phase else None
    data, count = await backend.list_tasks(phases=phases, worker_id=worker, model=model, limit=limit, offset=offset)
    return TasksPublic(data=data, count=count)


@router.get("/{task_id}", dependencies=[Authorized])
async def get_task(task_id: str, backend: BackendDep) -> TaskPublic:
    """The whole task, result included."""
    return await backend.get_task(task_id)


@router.get("/{task_id}/status", dependencies=[Authorized])
async def get_task_status(task_id: str, backend: BackendDep) -> TaskPublic:
    """Phase, reason, attempts and timings (no result)."""
    task = await backend.get_task(task_id)
    return task.model_copy(update={"result": None})


@router.get("/{task_id}/result", dependencies=[Authorized])
async def get_task_result(task_id: str, backend: BackendDep) -> dict[str, Any]:
    """The result of a succeeded task; 409 naming the phase otherwise."""
    task = await backend.get_task(task_id)
    if task.phase != Phase.SUCCEEDED:
        why = f": {task.reason}: {task.message}" if task.reason else ""
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} is {task.phase.value}, not Succeeded{why}")
    return {"id": task.id, "model": task.model, "phase": task.phase, "result": task.result}


@router.post("/{task_id}/cancel", dependencies=[Authorized])
async def cancel_task(task_id: str, backend: BackendDep) -> TaskPublic:
    """Cancel a task that has not finished."""
    return await backend.cancel_task(task_id)
