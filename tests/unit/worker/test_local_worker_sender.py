"""The local worker's sender thread: whatever one answer or batch does, it keeps reporting outcomes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from helpers import wait_until

from legacygpu.worker.local_worker import LocalWorker


@pytest.fixture
def worker() -> Iterator[LocalWorker]:
    worker = LocalWorker(api_url="http://127.0.0.1:9", token="join", backend="auto", name="sender")
    worker.worker_id = "w-1"
    worker.inbox.open("w-1", "own")
    yield worker
    worker._finished.set()


def outcome(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id, "worker_id": "w-1", "attempt": 1, "result": {}}


@contextmanager
def running_sender(worker: LocalWorker) -> Iterator[Callable[[str], None]]:
    """The worker holding t1 and t2 with its sender thread running; yields a function that reports one task's
    outcome to it. On leaving, the sender must stop when the worker does."""
    worker.inbox.put([{"id": "t1"}, {"id": "t2"}])
    sender = threading.Thread(target=worker._sender_loop, daemon=True)
    sender.start()

    def report(task_id: str) -> None:
        with worker._outcome_ready:
            worker._outcomes.append(outcome(task_id))
            worker._outcome_ready.notify()

    yield report
    worker._finished.set()
    sender.join(5)
    assert not sender.is_alive()


@pytest.mark.parametrize("answer", [b"<html>a proxy's page</html>", b'{"unexpected": 1}', b'{"data": [1]}'])
def test_a_2xx_that_is_not_the_facades_answer_does_not_stop_the_sender(worker: LocalWorker, answer: bytes) -> None:
    posted: list[list[str]] = []
    answers = iter([(200, answer), (200, b'{"data": [{"task_id": "t2", "status": "applied", "detail": ""}]}')])
    both_sent = threading.Event()

    def post(path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
        posted.append([o["task_id"] for o in body["completed"]])
        if len(posted) == 2:
            both_sent.set()
        return next(answers)

    worker._poster.post = post  # type: ignore[method-assign]
    with running_sender(worker) as report:
        report("t1")
        wait_until(lambda: posted == [["t1"]], timeout=10, interval=0.005)
        wait_until(lambda: "t1" not in worker.inbox.held(), timeout=10, interval=0.005,
                   what="the first batch is no longer held")
        report("t2")
        assert both_sent.wait(10), f"the sender died after an unreadable answer: posted {posted}"
        wait_until(lambda: worker.inbox.held() == [], timeout=10, interval=0.005)


def test_an_unexpected_error_in_one_batch_does_not_stop_the_sender(worker: LocalWorker) -> None:
    posted: list[list[str]] = []

    def post(path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
        posted.append([o["task_id"] for o in body["completed"]])
        if len(posted) == 1:
            raise RuntimeError("a bug")
        return 200, b'{"data": []}'

    worker._poster.post = post  # type: ignore[method-assign]
    with running_sender(worker) as report:
        for task_id in ("t1", "t2"):
            report(task_id)
            wait_until(lambda n=len(posted) + 1: len(posted) == n, timeout=10, interval=0.005)
        wait_until(lambda: worker.inbox.held() == [], timeout=10, interval=0.005,
                   what="both batches are done with, the failed one included")
