"""A local worker runs a lone pushed task at once, in the push's answer, only when it is idle and the task is quick.

A real :class:`LocalWorker` with a real :class:`TaskRunner` (onnxruntime, the demo digits model); no facade:
the outcomes are what the worker would answer the push with, or queue for its sender.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker import local_worker
from legacygpu.worker.local_worker import INLINE_TASK_SECONDS, LocalWorker
from legacygpu.worker.runner import TaskRunner

INPUTS = [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0, 5.0] * 32}]


def pushed(task_id: str, inputs: list[dict[str, Any]] = INPUTS) -> dict[str, Any]:
    return {"id": task_id, "model": "digits", "attempt": 2, "inputs": inputs, "parameters": {}}


@pytest.fixture
def worker(demo_repository: Path) -> Iterator[LocalWorker]:
    worker = LocalWorker(api_url="http://127.0.0.1:9", token="join", backend="onnxruntime", name="inline")
    worker.worker_id = "w-1"
    worker.inbox.open("w-1", "own")
    worker._runner = TaskRunner(ModelRepository(demo_repository), worker.backend)
    yield worker
    worker._finished.set()


def test_a_model_not_yet_timed_here_waits_in_the_inbox_then_its_next_task_runs_at_once(
    worker: LocalWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However long this machine takes to run digits, it counts as quick: the bound is test_a_busy_worker...'s.
    monkeypatch.setattr(local_worker, "INLINE_TASK_SECONDS", 60.0)
    assert worker.run_now(pushed("t0")) is None, "how long the model takes is not known yet"
    worker._run_task(pushed("t0"))  # the task loop's way, the outcome to the sender; this one loads the model
    assert "digits" in worker._task_seconds, "timed by the task loop"
    queued = worker._outcomes[-1]
    done = worker.run_now(pushed("t2"))
    assert done is not None
    assert {k: done[k] for k in ("task_id", "worker_id", "attempt")} == {"task_id": "t2", "worker_id": "w-1",
                                                                        "attempt": 2}
    assert done["result"] == {**queued["result"]}, "the same result as the task loop gives for the same input"
    assert done["compute_ms"] > 0 and "error" not in done
    assert [o["task_id"] for o in worker._outcomes] == ["t0"], "an outcome answered at once is not also sent"
    assert worker.running == 0


def test_a_busy_worker_or_a_slow_model_queues_the_task(worker: LocalWorker) -> None:
    worker.runner.load("digits")  # type: ignore[union-attr]
    worker._task_seconds["digits"] = 0.0
    assert worker.run_now(pushed("t0")) is not None, "idle, loaded and quick: run at once"
    worker._task_seconds["digits"] = 0.0
    worker.inbox.put([pushed("t2")])
    assert worker.run_now(pushed("t3")) is None, "behind a queued task, not before it"
    assert worker.inbox.get(timeout=1) is not None
    worker.running = 1
    assert worker.run_now(pushed("t3")) is None, "not beside a running task"
    worker.running = 0
    worker._task_seconds["digits"] = INLINE_TASK_SECONDS
    assert worker.run_now(pushed("t3")) is None, "a slow model would hold up the serving loop"
    worker._task_seconds["digits"] = 0.0
    worker.worker_id = None
    assert worker.run_now(pushed("t3")) is None, "the facade forgot this worker: an outcome would name none"
    worker.worker_id = "w-1"
    worker.inbox.close()
    assert worker.run_now(pushed("t3")) is None, (
        "a stopping worker: its task loop may have seen nothing running and deregistered, and the facade taken the "
        "task back")
    worker.inbox.open("w-1", "own")
    worker.runner.unload("digits")  # type: ignore[union-attr]
    assert worker.run_now(pushed("t3")) is None, "a model to load first would too"
    assert worker.running == 0, "declined by the runner: nothing is left reserved"


def test_a_task_that_fails_at_once_is_answered_with_its_error(worker: LocalWorker) -> None:
    worker.runner.load("digits")  # type: ignore[union-attr]
    worker._task_seconds["digits"] = INLINE_TASK_SECONDS / 2
    wrong = [{**INPUTS[0], "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]
    failed = worker.run_now(pushed("t2", wrong))
    assert failed is not None and "result" not in failed
    assert failed["error"]["retryable"] is False and "input" in failed["error"]["message"]
    assert worker._task_seconds["digits"] == INLINE_TASK_SECONDS / 2, "a quick failure does not time the model"


def test_a_task_run_at_once_that_took_unexpectedly_long_is_also_reported(
    worker: LocalWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The facade may have given up waiting for the push's answer; were the outcome only in it, the task would be
    run again."""
    worker.runner.load("digits")  # type: ignore[union-attr]
    worker._task_seconds["digits"] = 0.0
    assert worker.run_now(pushed("t1")) is not None and worker._outcomes == []
    monkeypatch.setattr(local_worker, "_ALSO_REPORT_SECONDS", 0.0)  # any run took that long
    worker._task_seconds["digits"] = 0.0
    answered = worker.run_now(pushed("t2"))
    assert answered is not None and worker._outcomes == [answered]
