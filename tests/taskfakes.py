"""The local coordinator's task channel, faked, for tests that drive :class:`LocalBackend` directly.

The real channel is an HTTP request to the worker's serving port
(:class:`legacygpu.api.backends.local.channel.HttpChannel`); the
integration tests (tests/integration/test_task_push.py) run it between real
processes. Here :class:`FakeChannel` records each push so a test can play
the worker: :func:`take` is what a worker receives, :func:`complete` what it
reports.
"""

from __future__ import annotations

from typing import Any

from legacygpu.api.backends.local import LocalBackend
from legacygpu.api.backends.local.channel import Delivery, Refused
from legacygpu.api.schemas import ClaimedTask, Completion, TaskCompletion, TaskPublic
from legacygpu.core.errors import ConflictError

SERVING: dict[str, Any] = {"serving": {"rest": "http://127.0.0.1:9"}}
"""Stats of a worker that announced a serving endpoint (pushes go there); never dialled by the fake."""


class FakeChannel:
    """Records pushes instead of sending them; refuses those to the workers in ``refuse``."""

    def __init__(self) -> None:
        self.pushes: list[Delivery] = []
        self.refuse: set[str] = set()
        self._unread: dict[str, list[ClaimedTask]] = {}

    async def push(self, delivery: Delivery) -> None:
        if delivery.worker_id in self.refuse:
            raise Refused(f"worker {delivery.worker_name} answered 503: draining")
        self.pushes.append(delivery)
        self._unread.setdefault(delivery.worker_id, []).extend(delivery.tasks)

    def take(self, worker_id: str) -> list[ClaimedTask]:
        return self._unread.pop(worker_id, [])


def connect(backend: LocalBackend) -> FakeChannel:
    channel = FakeChannel()
    backend.connect_workers(channel)
    return channel


async def take(backend: LocalBackend, worker_id: str) -> list[ClaimedTask]:
    """What the worker has received so far: the pushes of the passes made, sent now."""
    await backend.deliver()
    channel = backend.channel
    assert isinstance(channel, FakeChannel)
    return channel.take(worker_id)


async def complete(backend: LocalBackend, task_id: str, completion: Completion) -> TaskPublic:
    """One outcome, as a batch of one; ConflictError (as the lifecycle words it) when it is refused."""
    [answer] = await backend.complete_tasks(
        completion.worker_id, [TaskCompletion(task_id=task_id, **completion.model_dump())]
    )
    if answer.status == "refused":
        raise ConflictError(answer.detail)
    return await backend.get_task(task_id)
