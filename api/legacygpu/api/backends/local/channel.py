"""The task channel: how the local coordinator hands tasks to workers.

Workers do not ask for work. After each scheduling pass the coordinator
sends every worker the tasks it just started for it, several in one request
(:class:`Delivery`), to the worker's task endpoint on its serving port
(``POST {rest}/internal/tasks``, :data:`TASKS_PATH`, served by
:mod:`legacygpu.worker.taskchannel`) over persistent connections to the
workers (an aiohttp session of the facade's forwarder,
:meth:`legacygpu.api.forwarding.Forwarder.session`; ``/v2`` requests have
a pool of their own). The request carries the worker's own
token (the one it got at registration), which only the facade (holding the
secret it is derived from) and that worker know, so nobody else can hand a
worker work. Completions travel the other way, in batches too
(``POST /cluster/workers/{id}/completions``).

A push ends one of three ways, which decide what happens to its tasks:

* accepted (2xx): the worker holds them; it reports each one later;
* :class:`Refused`: the worker certainly did not take them (the connection
  was refused, or the worker answered with an error: not registered yet,
  draining, a token of another registration): the coordinator puts them
  back in the queue without spending an attempt;
* :class:`Unanswered`: the request may have arrived (a timeout, a reset
  after sending): the tasks stay Running on that worker, as a claimed task
  did, until the worker reports them or is declared lost (then they are
  retried elsewhere). The worker's endpoint only queues the tasks and
  answers at once, so this needs a worker whose event loop is stuck, and
  one stuck that long stops heartbeating too.

:class:`TaskChannel` is the seam: :class:`HttpChannel` in the facade, a
recording fake in the coordinator's unit tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from legacygpu.api.schemas import ClaimedTask

__all__ = ["TASKS_PATH", "Delivery", "HttpChannel", "Refused", "TaskChannel", "Unanswered"]

TASKS_PATH = "/internal/tasks"
"""The worker's task endpoint, under its REST serving URL."""
_PUSH_TIMEOUT = aiohttp.ClientTimeout(total=10.0, connect=2.0)


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
    """Sends a :class:`Delivery`; raises :class:`Refused` or :class:`Unanswered` when it does not arrive."""

    async def push(self, delivery: Delivery) -> None: ...


class HttpChannel:
    """Pushes over the facade's persistent connections to the workers, as the worker's own token."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession], token_for: Callable[[str], str]) -> None:
        self._session = session
        self._token_for = token_for

    async def push(self, delivery: Delivery) -> None:
        body = {"worker_id": delivery.worker_id, "tasks": [t.model_dump() for t in delivery.tasks]}
        headers = {"Authorization": f"Bearer {self._token_for(delivery.worker_id)}"}
        try:
            async with self._session().post(delivery.url + TASKS_PATH, json=body, headers=headers,
                                            timeout=_PUSH_TIMEOUT) as response:
                if response.status >= 300:
                    raise Refused(f"worker {delivery.worker_name} answered {response.status}: "
                                  f"{(await response.text())[:200]}")
        except aiohttp.ClientConnectorError as exc:  # nothing was sent
            raise Refused(f"worker {delivery.worker_name} is unreachable: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:  # RuntimeError: the pool closed (shutdown)
            raise Unanswered(f"worker {delivery.worker_name} did not answer: {type(exc).__name__}: {exc}") from exc
