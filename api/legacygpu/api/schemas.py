"""Request and response bodies of the REST facade.

Named by role, as the FastAPI template does: ``XCreate`` is what a client
sends to make an X, ``XPublic`` what it gets back, ``XsPublic`` a page of
them (``data`` + ``count``). Both cluster backends (local and Kubernetes)
return exactly these shapes, so the CLI and the dashboard cannot tell them
apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from legacygpu.core.modelcards import ModelCard
from legacygpu.core.tasks import Phase
from legacygpu.core.tensors import Tensor

__all__ = [
    "ClaimedTask",
    "Completion",
    "CompletionAnswer",
    "CompletionBatch",
    "CompletionsAnswered",
    "DeviceInfoPublic",
    "ErrorPublic",
    "HealthPublic",
    "Heartbeat",
    "HeartbeatReply",
    "ModelPublic",
    "ModelsPublic",
    "RequirementsIn",
    "TaskCompletion",
    "TaskCreate",
    "TaskError",
    "TaskPublic",
    "TasksCreate",
    "TasksPublic",
    "WorkerPublic",
    "WorkerRegister",
    "WorkerRegistered",
    "WorkersPublic",
]

WorkerState = Literal["active", "draining", "stopped", "lost"]
INT64_MAX = 2**63 - 1  # SQLite's INTEGER; larger numbers are refused at the boundary, not overflowed in the store


class ErrorPublic(BaseModel):
    """Every 4xx and 5xx body: one sentence saying what was wrong and, where it helps, what to do."""

    detail: str = Field(description="What was wrong, naming the field or limit concerned.")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequirementsIn(_In):
    min_vram_mib: int = Field(
        0, ge=0, le=INT64_MAX, description="Only workers whose device has at least this much memory."
    )
    gpu_family: str | None = Field(None, description="Only workers with this GPU family, e.g. polaris.")


class TaskCreate(_In):
    """An inference job: run ``model`` on ``inputs``."""

    model: str = Field(min_length=1, description="Name of a model in the repository.")
    inputs: list[Tensor] = Field(min_length=1, description="Open Inference Protocol v2 tensors.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; FIFO within a priority.")
    timeout_seconds: int | None = Field(None, ge=1, le=7 * 24 * 3600, description="From submission.")
    max_retries: int | None = Field(None, ge=0, le=20)
    requirements: RequirementsIn = Field(default_factory=RequirementsIn)


MAX_TASKS_PER_SUBMIT = 1000
"""Tasks one ``POST /cluster/tasks/submit-many`` may carry."""


class TasksCreate(_In):
    """``POST /cluster/tasks/submit-many``: several tasks in one request, all accepted or none."""

    tasks: list[TaskCreate] = Field(min_length=1, max_length=MAX_TASKS_PER_SUBMIT,
                                    description="Each one as ``POST /cluster/tasks/submit`` takes it.")


class TaskError(_In):
    reason: str
    message: str
    retryable: bool = False


class AttemptRecord(BaseModel):
    attempt: int
    worker_id: str | None = None
    outcome: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TaskPublic(BaseModel):
    id: str
    model: str
    phase: Phase
    reason: str | None = None
    message: str | None = None
    priority: int = 0
    worker_id: str | None = None
    attempts: int = 0
    max_retries: int = 0
    timeout_seconds: int = 0
    created_at: datetime
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    latency_ms: float | None = Field(None, description="Submission to completion.")
    compute_ms: float | None = Field(None, description="Time the worker spent running the model.")
    history: list[AttemptRecord] = Field(default_factory=list)
    result: dict[str, Any] | None = None


class TasksPublic(BaseModel):
    data: list[TaskPublic]
    count: int


class DeviceInfoPublic(BaseModel):
    name: str = "cpu"
    type: str = "cpu"
    backend: str = "onnxruntime"
    vram_mib: int = Field(0, ge=0, le=INT64_MAX)
    gpu_family: str | None = None


class WorkerRegister(_In):
    name: str = Field(min_length=1, max_length=128)
    host: str = ""
    pid: int = Field(0, ge=0, le=INT64_MAX)
    device: DeviceInfoPublic = Field(default_factory=DeviceInfoPublic)
    concurrency: int = Field(1, ge=1, le=64)
    stats: dict[str, Any] = Field(
        default_factory=dict, description="Figures at registration (memory, models); heartbeats replace them."
    )


class Heartbeat(_In):
    running: int = Field(0, ge=0, le=INT64_MAX)
    stats: dict[str, Any] = Field(default_factory=dict)
    holding: list[str] | None = Field(
        None, max_length=4096,
        description="Ids of the pushed tasks the worker holds (queued, running, or finished and not yet "
        "acknowledged). A task started on the worker long before and not among them never arrived: it goes "
        "back to the queue. Omitted: not checked.",
    )


class HeartbeatReply(BaseModel):
    state: WorkerState
    heartbeat_interval_seconds: float


class WorkerPublic(BaseModel):
    id: str
    name: str
    host: str
    pid: int
    state: WorkerState
    device: DeviceInfoPublic
    concurrency: int
    assigned: int = Field(0, description="Tasks scheduled to or running on the worker now.")
    registered_at: datetime
    last_heartbeat: datetime
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    stats: dict[str, Any] = Field(default_factory=dict)


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]
    count: int


class WorkerRegistered(BaseModel):
    id: str
    heartbeat_interval_seconds: float
    model_repository: str | None = None
    token: str | None = Field(
        None, description="The worker's own bearer token: the only one accepted for its heartbeats, claims, "
        "results and deregistration."
    )


class ClaimedTask(BaseModel):
    """A task handed to a worker: the coordinator pushes these to the worker's task endpoint."""

    id: str
    model: str
    attempt: int
    inputs: list[dict[str, Any]]
    parameters: dict[str, Any]


class Completion(_In):
    worker_id: str
    attempt: int = Field(ge=1, le=INT64_MAX)
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    compute_ms: float | None = Field(None, ge=0, le=1e12)


class TaskCompletion(Completion):
    """A :class:`Completion` that names its task: one entry of a worker's batch of outcomes."""

    task_id: str


class CompletionBatch(_In):
    """``POST /cluster/workers/{id}/completions``: a worker's outcomes, sent together, applied in one transaction."""

    completed: list[TaskCompletion] = Field(min_length=1, max_length=256)


class CompletionAnswer(BaseModel):
    """What became of one outcome of a batch."""

    task_id: str
    status: Literal["applied", "repeated", "refused"] = Field(
        description="applied; repeated (the same outcome was applied before: nothing changed); refused (the "
        "attempt is no longer current, or the task is gone: see detail)."
    )
    detail: str = ""


class CompletionsAnswered(BaseModel):
    data: list[CompletionAnswer]


class ModelPublic(BaseModel):
    name: str
    description: str
    task: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    labels: int = Field(0, description="How many class labels the card has.")
    metrics: dict[str, float | str] = Field(default_factory=dict)

    @classmethod
    def from_card(cls, card: ModelCard) -> ModelPublic:
        return cls(
            name=card.name,
            description=card.description,
            task=card.task,
            inputs=[spec.model_dump(exclude_none=True) for spec in card.inputs],
            outputs=[spec.model_dump(exclude_none=True) for spec in card.outputs],
            labels=len(card.postprocess.labels),
            metrics=card.metrics,
        )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"]
    backend: str
    workers_active: int
    version: str
    database: Literal["ok", "locked", "error"] | None = Field(
        None, description="The local cluster's database: ok, locked (writes get 503) or error; null without one."
    )
    database_message: str | None = Field(None, description="Why the database is not ok.")
