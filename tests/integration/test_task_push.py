"""Tasks are pushed to the worker over its serving port; the worker asks for nothing and reports in batches.

A real facade process on loopback and a real :class:`LocalWorker` (onnxruntime,
the demo digits model) in this process, serving its REST endpoints (and so
its task channel) on a real port, with its HTTP requests to the facade and
the pushes it receives recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import JOIN_TOKEN, TOKEN, LocalCluster, wait_until

from legacygpu.worker import local_worker
from legacygpu.worker.local_worker import LocalWorker
from legacygpu.worker.serving import ServingEngine, ServingServer
from legacygpu.worker.taskchannel import TASKS_PATH

TASKS = 8


@pytest.fixture
def cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """A facade that gives heartbeats time (the worker shares this loaded process with the test) and lets a
    worker hold all the tasks at once."""
    c = LocalCluster(data_dir, env={"LEGACYGPU_HEARTBEAT_TIMEOUT_SECONDS": "60", "LEGACYGPU_WORKER_PREFETCH": "8"})
    c.start_api()
    try:
        yield c
    finally:
        c.stop()


class Running:
    """A LocalWorker in a thread, serving its endpoints (with the task channel) on a free loopback port."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.worker = LocalWorker(api_url=cluster.url, token=JOIN_TOKEN, backend="onnxruntime", name="busy")
        self.server = ServingServer(ServingEngine(lambda: self.worker.runner), grpc_port=None,
                                    routes=self.worker.routes())
        self.worker.serving = self.server.start()
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def stop(self) -> None:
        self.worker.stop_requested.set()
        self.thread.join(30)
        self.server.stop()


@pytest.fixture
def running(cluster: LocalCluster) -> Iterator[Running]:
    r = Running(cluster)
    try:
        yield r
    finally:
        r.stop()


def digit_inputs() -> list[dict[str, Any]]:
    return [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0, 5.0] * 32}]


def test_the_worker_is_pushed_its_tasks_and_reports_them_in_batches(cluster: LocalCluster, running: Running) -> None:
    submitted = [cluster.submit(model="digits", inputs=digit_inputs())["id"] for _ in range(TASKS)]
    worker = running.worker
    requests: list[tuple[str, str, dict[str, Any]]] = []
    first_report = threading.Event()

    def record(request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        requests.append((request.method, request.url.path, body))

    real_post = worker._poster.post

    def record_post(path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
        requests.append(("POST", path, body))
        if path.endswith("/completions") and not first_report.is_set():
            first_report.set()
            time.sleep(2.0)  # hold the first report: the tasks finishing meanwhile must share the next request
        return real_post(path, body, headers)

    worker._http.event_hooks["request"].append(record)  # register, heartbeats
    worker._poster.post = record_post  # type: ignore[method-assign]  # the outcomes
    pushes: list[list[str]] = []
    real_put = worker.inbox.put

    def recording_put(tasks: list[dict[str, Any]]) -> None:
        pushes.append([t["id"] for t in tasks])
        real_put(tasks)

    worker.inbox.put = recording_put  # type: ignore[method-assign]
    running.thread.start()
    done = [cluster.wait_phase(task_id, {"Succeeded", "Failed"}, timeout=120) for task_id in submitted]
    assert [t["phase"] for t in done] == ["Succeeded"] * TASKS
    assert all(t["result"]["top_k"] for t in done)
    assert pushes[0] == submitted, "the queue was there before the worker: all of it in the first push, in order"
    paths = [path for _, path, _ in requests]
    assert not [p for p in paths if p.endswith(("/claim", "/complete"))], paths
    batches = [[c["task_id"] for c in body["completed"]] for _, path, body in requests
               if path.endswith("/completions")]
    assert sorted(i for b in batches for i in b) == sorted(submitted), "every outcome reported exactly once"
    assert max(len(b) for b in batches) >= 2, f"outcomes that finish together go together: {batches}"
    assert len(batches) < TASKS


def test_pushes_take_the_workers_own_token_and_a_well_formed_body(cluster: LocalCluster, running: Running) -> None:
    running.thread.start()
    wait_until(lambda: cluster.worker("busy"), timeout=60, what="the worker to register")
    worker = running.worker
    url = worker.serving["rest"] + TASKS_PATH if worker.serving else ""
    own = str(worker._http.headers["Authorization"])
    push = {"worker_id": worker.worker_id, "tasks": []}
    assert httpx.post(url, json=push).status_code == 401
    assert httpx.post(url, json=push, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    wrong = httpx.post(url, json={**push, "worker_id": "w-other"}, headers={"Authorization": own})
    assert wrong.status_code == 409 and "w-other" in wrong.json()["error"]
    bad = httpx.post(url, json={**push, "tasks": [{"id": "t"}]}, headers={"Authorization": own})
    assert bad.status_code == 400 and "tasks[0].model" in bad.json()["error"]
    assert httpx.post(url, json=push, headers={"Authorization": own}).json() == {"accepted": 0}


def test_a_refused_outcome_in_a_batch_does_not_stop_the_others(cluster: LocalCluster) -> None:
    body = {"name": "w", "host": "h", "pid": 1, "device": {"name": "d"}, "concurrency": 1}
    registered = cluster.join.post("/cluster/workers/register", json=body).json()
    wid, own = registered["id"], {"Authorization": f"Bearer {registered['token']}"}  # a worker's calls need its token
    stale = {"task_id": "task-nonexistent", "worker_id": wid, "attempt": 1, "result": {}}
    response = cluster.http.post(f"/cluster/workers/{wid}/completions", json={"completed": [stale]}, headers=own)
    assert response.status_code == 200, response.text
    [answer] = response.json()["data"]
    assert answer["status"] == "refused" and "task-nonexistent" in answer["detail"]
    bad = cluster.http.post(f"/cluster/workers/{wid}/completions", json={"completed": [{"task_id": "x"}]},
                            headers=own)
    assert bad.status_code == 422 and "worker_id" in bad.text, "a malformed outcome is a 4xx naming the field"
    empty = cluster.http.post(f"/cluster/workers/{wid}/completions", json={"completed": []}, headers=own)
    assert empty.status_code == 422 and "completed" in empty.text


def test_a_lone_task_on_an_idle_worker_comes_back_in_the_push_answer(
    cluster: LocalCluster, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However long this loaded machine takes to run digits, it counts as quick: the mechanism is under test.
    monkeypatch.setattr(local_worker, "INLINE_TASK_SECONDS", 60.0)
    worker = running.worker
    reported: list[str] = []
    real_post = worker._poster.post

    def record_post(path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
        reported.extend(c["task_id"] for c in body.get("completed", []))
        return real_post(path, body, headers)

    worker._poster.post = record_post  # type: ignore[method-assign]
    handed: list[str] = []  # outcomes handed to the sender: a report is decided there, before the push's answer
    real_report = worker._report

    def record_report(outcome: dict[str, Any]) -> None:
        handed.append(outcome["task_id"])
        real_report(outcome)

    worker._report = record_report  # type: ignore[method-assign]
    running.thread.start()
    warm = [cluster.submit(model="digits", inputs=digit_inputs())["id"] for _ in range(2)]
    for task_id in warm:  # the model loads and is timed
        assert cluster.wait_phase(task_id, {"Succeeded", "Failed"}, timeout=120)["phase"] == "Succeeded"
    assert warm[0] in reported, "a model not yet timed here: its first task is reported the usual way"
    wait_until(lambda: worker.inbox.held() == [] and not worker._outcomes, timeout=30,
               what="the warm-up outcomes to be reported")
    lone = cluster.submit(model="digits", inputs=digit_inputs())["id"]
    done = cluster.wait_phase(lone, {"Succeeded", "Failed"}, timeout=60)
    assert done["phase"] == "Succeeded" and done["result"]["top_k"] == cluster.task(warm[0])["result"]["top_k"]
    assert done["attempts"] == 1 and done["compute_ms"] is not None
    assert warm[0] in handed and lone not in handed + reported, \
        "its outcome came back in the push's answer, not in a report of its own"
    assert worker.inbox.held() == []
