"""A busy worker sends each outcome with its next claim: one round trip per task, not two.

A real facade process on loopback and a real :class:`LocalWorker` (onnxruntime,
the demo digits model) in this process, with its HTTP requests recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import JOIN_TOKEN, LocalCluster

from legacygpu.worker.local_worker import LocalWorker

TASKS = 6


@pytest.fixture
def cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """A facade that gives heartbeats time: the worker shares this loaded process with the test."""
    c = LocalCluster(data_dir, env={"LEGACYGPU_HEARTBEAT_TIMEOUT_SECONDS": "60"})
    c.start_api()
    try:
        yield c
    finally:
        c.stop()


def digit_inputs() -> list[dict[str, Any]]:
    return [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0, 5.0] * 32}]


def test_outcomes_ride_on_the_next_claim(cluster: LocalCluster) -> None:
    submitted = [cluster.submit(model="digits", inputs=digit_inputs())["id"] for _ in range(TASKS)]
    worker = LocalWorker(api_url=cluster.url, token=JOIN_TOKEN, backend="onnxruntime", name="busy")
    requests: list[tuple[str, str, dict[str, Any]]] = []

    def record(request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        requests.append((request.method, request.url.path, body))

    worker._http.event_hooks["request"].append(record)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        done = [cluster.wait_phase(task_id, {"Succeeded", "Failed"}, timeout=120) for task_id in submitted]
    finally:
        worker.stop_requested.set()
        thread.join(30)
    assert [t["phase"] for t in done] == ["Succeeded"] * TASKS
    assert all(t["result"]["top_k"] for t in done)
    completes = [path for method, path, _ in requests if path.endswith("/complete")]
    assert completes == [], "\n".join(f"{m} {p} {len(b.get('completed', []))}" for m, p, b in requests)
    carried = [c["task_id"] for _, path, body in requests if path.endswith("/claim") for c in body["completed"]]
    assert sorted(carried) == sorted(submitted)


def test_a_refused_outcome_does_not_stop_the_claim(cluster: LocalCluster) -> None:
    body = {"name": "w", "host": "h", "pid": 1, "device": {"name": "d"}, "concurrency": 1}
    registered = cluster.join.post("/cluster/workers/register", json=body).json()
    wid, own = registered["id"], {"Authorization": f"Bearer {registered['token']}"}  # a worker's calls need its token
    task_id = cluster.submit(model="digits", inputs=digit_inputs())["id"]
    stale = {"task_id": "task-nonexistent", "worker_id": wid, "attempt": 1, "result": {}}
    response = cluster.http.post(
        f"/cluster/workers/{wid}/claim", params={"max_tasks": 1, "wait": 10}, json={"completed": [stale]}, headers=own
    )
    assert response.status_code == 200, response.text
    assert [t["id"] for t in response.json()] == [task_id]
    bad = cluster.http.post(f"/cluster/workers/{wid}/claim", json={"completed": [{"task_id": "x"}]}, headers=own)
    assert bad.status_code == 422 and "worker_id" in bad.text, "a malformed outcome is a 4xx naming the field"
