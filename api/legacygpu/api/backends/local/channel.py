"""The task channel: how the local coordinator hands tasks to workers.

Workers do not ask for work. After each scheduling pass the coordinator
sends every worker the tasks it just started for it, several in one request
(:class:`Delivery`), to the worker's task endpoint on its serving port
(``POST {rest}/internal/tasks``, :data:`TASKS_PATH`, served by
:mod:`legacygpu.worker.taskchannel`) over persistent connections to the
workers: a :class:`~legacygpu.api.workerhttp.WorkerPool` of the channel's
own (``/v2`` requests have the forwarder's), the facade's lean HTTP/1.1
client. On an idle cluster a lone task's push is on its critical path, and
aiohttp's client spent about twice the pool's time on each round trip
(request and response objects, timers, tracing hooks). The request carries
the worker's own token (the one it got at registration), which only the
facade (holding the secret it is derived from) and that worker know, so
nobody else can hand a worker work. Completions travel the other way, in
batches too (``POST /cluster/workers/{id}/completions``).

A push ends one of three ways, which decide what happens to its tasks:

* accepted (2xx): the worker holds them; it reports each one later. Or,
  for a lone task on an idle worker, it ran it before answering, and the
  answer (200) carries the outcome, which the coordinator applies as that
  worker's completion (:mod:`legacygpu.worker.taskchannel`); an outcome
  that does not come back (the answer lost) is a task the worker does not
  hold, which the heartbeat check puts back in the queue once the push's
  grace period (``_PUSH_GRACE_SECONDS`` plus a heartbeat interval) has passed;
* :class:`Refused`: the worker certainly did not take them (no connection
  could be made, or the worker answered with an error: not registered yet,
  draining, a token of another registration): the coordinator puts them
  back in the queue without spending an attempt;
* :class:`Unanswered`: the request may have arrived (a timeout, a reset
  after sending): the tasks stay Running on that worker, as a claimed task
  did, until the worker reports them or is declared lost (then they are
  retried elsewhere). The worker's endpoint only queues the tasks and
  answers at once, so this needs a worker whose event loop is stuck, and
  one stuck that long stops heartbeating too.

A kept-alive connection that the worker closed while it was idle fails with
no byte of an answer; the pool then sends the push once more on a new
connection (see :mod:`legacygpu.api.workerhttp`). Idle connections are
dropped well before the worker's own idle timeout, so this is rare, and
should the first request have arrived after all, the worker runs the task
twice and the facade answers the second outcome ``repeated``: the attempt
number keeps it from being applied twice.

:class:`TaskChannel` is the seam: :class:`HttpChannel` in the facade, a
recording fake in the coordinator's unit tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError

from legacygpu.api.forwarding import KEEPALIVE_SECONDS
from legacygpu.api.schemas import ClaimedTask, CompletionBatch, TaskCompletion
from legacygpu.api.workerhttp import FacadeOverloaded, WorkerFailed, WorkerPool, WorkerUnreachable

__all__ = ["TASKS_PATH", "Delivery", "HttpChannel", "Refused", "TaskChannel", "Unanswered"]

TASKS_PATH = "/internal/tasks"
"""The worker's task endpoint, under its REST serving URL."""
_CONNECT_TIMEOUT_SECONDS = 2.0
_ANSWER_TIMEOUT_SECONDS = 10.0


log = logging.getLogger(__name__)


class Refused(Exception):
    """The worker did not take the tasks: they may go to another worker at no cost."""


class Unanswered(Exception):
    """No answer: the worker may hold the tasks or not."""


@dataclass(frozen=True)
class Delivery:
    """Tasks started for one worker in one pass, to be sent in one request."""

    worker_id: str
    worker_name: str
    url: str
    """The worker's REST serving URL (from its registration), without a trailing slash."""
    tasks: tuple[ClaimedTask, ...]


class TaskChannel(Protocol):
    """Sends a :class:`Delivery`; raises :class:`Refused` or :class:`Unanswered` when it does not arrive.

    Returns the outcomes the worker answered with (tasks it ran at once), to be applied as its completions.
    """

    async def push(self, delivery: Delivery) -> list[TaskCompletion]: ...


class HttpChannel:
    """Pushes over persistent connections to the workers (a pool of its own), as the worker's own token."""

    def __init__(self, token_for: Callable[[str], str], pool: WorkerPool | None = None) -> None:
        self._token_for = token_for
        self._pool = pool or WorkerPool(keepalive_seconds=KEEPALIVE_SECONDS, connect_timeout=_CONNECT_TIMEOUT_SECONDS,
                                        timeout=_ANSWER_TIMEOUT_SECONDS)

    async def push(self, delivery: Delivery) -> list[TaskCompletion]:
        body = json.dumps({"worker_id": delivery.worker_id, "tasks": [t.model_dump() for t in delivery.tasks]},
                          separators=(",", ":")).encode()
        headers = [(b"authorization", f"Bearer {self._token_for(delivery.worker_id)}".encode()),
                   (b"content-type", b"application/json")]
        try:
            answer = await self._pool.request(delivery.url, "POST", TASKS_PATH, headers, body)
        except (FacadeOverloaded, WorkerUnreachable) as exc:  # no connection (or no http:// URL): nothing sent
            raise Refused(f"worker {delivery.worker_name} is unreachable: {exc}") from exc
        except WorkerFailed as exc:
            raise Unanswered(f"worker {delivery.worker_name} did not answer: {exc}") from exc
        if answer.status >= 300:
            raise Refused(f"worker {delivery.worker_name} answered {answer.status}: "
                          f"{answer.body[:200].decode(errors='replace')}")
        if answer.status != 200:
            return []  # 202: queued there, reported later
        try:
            completed = CompletionBatch.model_validate_json(answer.body).completed
        except ValidationError as exc:  # taken, but its outcome unreadable: like an outcome lost on the way
            log.warning("worker %s answered a push with an unreadable outcome (%s); its tasks go back to the queue "
                        "once its heartbeat shows it does not hold them", delivery.worker_name, exc)
            return []
        sent = {t.id for t in delivery.tasks}
        mine = [c for c in completed if c.worker_id == delivery.worker_id and c.task_id in sent]
        if len(mine) < len(completed):
            log.warning("worker %s answered a push with %d outcome(s) of other workers or tasks; ignored",
                        delivery.worker_name, len(completed) - len(mine))
        return mine

    async def close(self) -> None:
        """Close the idle connections (the facade is stopping)."""
        await self._pool.close()
