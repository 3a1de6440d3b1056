"""The embedded local cluster end to end: real facade, real worker processes, real HTTP on loopback."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import SAMPLES, TOKEN, LocalCluster, image_tensor, wait_until


@pytest.fixture
def one_worker(cluster: LocalCluster) -> LocalCluster:
    cluster.start_worker("w1")
    return cluster


def test_digit_images_are_classified(one_worker: LocalCluster) -> None:
    ids = {digit: one_worker.submit(model="digits", inputs=[image_tensor(SAMPLES / f"digit-{digit}.png")])["id"]
           for digit in range(10)}
    correct = 0
    for digit, task_id in ids.items():
        task = one_worker.wait_phase(task_id, {"Succeeded", "Failed"})
        assert task["phase"] == "Succeeded", task
        top_k = task["result"]["top_k"]
        assert len(top_k) == 3 and top_k[0]["score"] >= top_k[1]["score"] >= top_k[2]["score"]
        assert {"label", "score"} <= top_k[0].keys()
        correct += top_k[0]["label"] == str(digit)
        assert task["attempts"] == 1 and task["latency_ms"] > 0 and task["compute_ms"] > 0
    assert correct == 10, f"{correct}/10 sample digits classified correctly"
    result = one_worker.http.get(f"/cluster/tasks/{ids[7]}/result").json()
    assert result["result"]["top_k"][0]["label"] == "7"
    status = one_worker.http.get(f"/cluster/tasks/{ids[7]}/status").json()
    assert status["result"] is None and status["phase"] == "Succeeded"
    page = one_worker.http.get("/cluster/tasks", params={"phase": "Succeeded", "limit": 5}).json()
    assert page["count"] == 10 and len(page["data"]) == 5
    worker = one_worker.worker("w1")
    assert worker is not None and worker["tasks_succeeded"] == 10
    stats = one_worker.http.get(f"/cluster/workers/{worker['id']}/stats").json()
    assert stats["tasks_succeeded"] == 10 and stats["state"] == "active"
    assert stats["memory_rss_bytes"] > 10_000_000  # reported at registration already

    def beat_after_the_tasks() -> dict[str, Any] | None:  # the worker's own figures come with its heartbeats
        latest = one_worker.http.get(f"/cluster/workers/{worker['id']}/stats").json()
        return latest if latest["models_loaded"] == ["digits"] else None

    stats = wait_until(beat_after_the_tasks, timeout=30, what="a heartbeat listing the loaded model")
    assert stats["memory_rss_bytes"] > 10_000_000


def test_bad_requests_get_4xx_naming_the_problem(data_dir: Path) -> None:
    cluster = LocalCluster(data_dir, env={"LEGACYGPU_MAX_REQUEST_BYTES": "65536"})
    cluster.start_api()
    try:
        cluster.start_worker("w1")
        http = cluster.http
        good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}

        def submit(body: object, **kw: object) -> httpx.Response:
            return http.post("/cluster/tasks/submit", json=body, **kw)  # type: ignore[arg-type]

        r = http.post("/cluster/tasks/submit", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "json" in r.text.lower()
        r = submit({"model": "digits", "inputs": [{**good, "shape": [1, 65], "data": [0.0] * 65}]})
        assert r.status_code == 422 and "shape [1, 65] does not match" in r.json()["detail"]
        r = submit({"model": "digits", "inputs": [{**good, "datatype": "STRING"}]})
        assert r.status_code == 422 and "unknown datatype 'STRING'" in r.json()["detail"]
        r = submit({"model": "resnet", "inputs": [good]})
        assert r.status_code == 422 and "unknown model 'resnet'" in r.json()["detail"]
        assert "digits" in r.json()["detail"], "the error lists the models that exist"
        r = submit({"model": "digits"})
        assert r.status_code == 422 and "inputs" in r.text
        r = submit({"model": "digits", "inputs": [{**good, "data": [0.0] * 20_000, "shape": [1, 20_000]}]})
        assert r.status_code == 413 and "over the limit of 65536 bytes" in r.json()["detail"]
        r = http.get("/cluster/tasks/task-nope")
        assert r.status_code == 404 and "task-nope" in r.json()["detail"]
        # ... and the cluster keeps serving.
        ok = cluster.submit(model="digits", inputs=[good])
        assert cluster.wait_phase(ok["id"], {"Succeeded", "Failed"})["phase"] == "Succeeded"
    finally:
        cluster.stop()


def test_token_is_required_except_for_health(cluster: LocalCluster) -> None:
    assert httpx.get(f"{cluster.url}/cluster/health").json()["status"] == "degraded"  # no workers yet
    for path in ("/cluster/workers", "/cluster/tasks", "/cluster/metrics", "/metrics", "/cluster/models"):
        missing = httpx.get(cluster.url + path)
        assert missing.status_code == 401 and "missing bearer token" in missing.json()["detail"], path
        wrong = httpx.get(cluster.url + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid token", path
    assert httpx.post(f"{cluster.url}/cluster/tasks/submit", json={}).status_code == 401


def test_killed_worker_task_completes_on_another_worker(cluster: LocalCluster, slow_model_repo: str) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    task = cluster.submit(model=slow_model_repo, inputs=[{"name": "x", "shape": [1, 1024], "datatype": "FP32",
                                                           "data": [1.0] * 1024}], max_retries=2)
    running = cluster.wait_phase(task["id"], {"Running"})
    victim = cluster.http.get(f"/cluster/workers/{running['worker_id']}").json()
    os.kill(victim["pid"], signal.SIGKILL)
    done = cluster.wait_phase(task["id"], {"Succeeded", "Failed"}, timeout=120)
    assert done["phase"] == "Succeeded", done
    assert done["attempts"] == 2
    assert done["worker_id"] != victim["id"]
    assert [h["outcome"] for h in done["history"]] == ["WorkerLost", "Completed"]
    assert cluster.http.get(f"/cluster/workers/{victim['id']}").json()["state"] == "lost"


def test_facade_restart_loses_no_task(cluster: LocalCluster, slow_model_repo: str) -> None:
    cluster.start_worker("w1")
    slow = cluster.submit(model=slow_model_repo, inputs=[{"name": "x", "shape": [1, 1024], "datatype": "FP32",
                                                           "data": [1.0] * 1024}])
    cluster.wait_phase(slow["id"], {"Running"})  # the only worker is busy for seconds: what follows waits
    good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [3.0] * 64}
    ids = [slow["id"]] + [cluster.submit(model="digits", inputs=[good])["id"] for _ in range(30)]
    unfinished = cluster.http.get(
        "/cluster/tasks", params={"phase": ["Queued", "Scheduled", "Running"], "limit": 100}
    ).json()
    waiting = set(ids[1:]) & {t["id"] for t in unfinished["data"]}
    assert waiting, "the facade is killed mid-run, with accepted digits tasks not finished yet"
    cluster.kill_api()
    cluster.start_api()
    ids += [cluster.submit(model="digits", inputs=[good])["id"] for _ in range(5)]
    for task_id in ids:
        assert cluster.wait_phase(task_id, {"Succeeded", "Failed"}, timeout=180)["phase"] == "Succeeded"
    assert cluster.http.get("/cluster/tasks", params={"limit": 1}).json()["count"] == 36


def test_task_past_its_timeout_fails_with_deadline_exceeded(cluster: LocalCluster) -> None:
    good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    task = cluster.submit(model="digits", inputs=[good], timeout_seconds=1)  # no worker: it can only wait
    failed = cluster.wait_phase(task["id"], {"Failed", "Succeeded"}, timeout=30)
    assert failed["phase"] == "Failed" and failed["reason"] == "DeadlineExceeded"
    result = cluster.http.get(f"/cluster/tasks/{task['id']}/result")
    assert result.status_code == 409 and "DeadlineExceeded" in result.json()["detail"]


def test_drained_worker_finishes_and_leaves(one_worker: LocalCluster) -> None:
    worker = one_worker.worker("w1")
    assert worker is not None
    drained = one_worker.admin.post(f"/cluster/workers/{worker['id']}/drain").json()
    assert drained["state"] == "draining"
    assert one_worker.workers["w1"].wait(timeout=30) == 0, "the worker process exits cleanly"
    assert one_worker.http.get(f"/cluster/workers/{worker['id']}").json()["state"] == "stopped"


def test_prometheus_metrics_follow_tasks(one_worker: LocalCluster) -> None:
    task = one_worker.submit(model="digits", inputs=[image_tensor(SAMPLES / "digit-1.png")])
    one_worker.wait_phase(task["id"], {"Succeeded"})
    text = wait_until(lambda: (t := one_worker.http.get("/metrics").text) and "legacygpu_worker_memory_rss_bytes{" in t
                      and t, what="a heartbeat with memory stats")
    assert 'legacygpu_tasks_finished_total{model="digits",phase="Succeeded"} 1.0' in text
    assert 'legacygpu_tasks_submitted_total{model="digits"} 1.0' in text
    assert 'legacygpu_workers{state="active"} 1.0' in text
    assert 'legacygpu_tasks{phase="Succeeded"} 1.0' in text
    assert 'legacygpu_task_compute_duration_seconds_count{model="digits"} 1.0' in text
    assert 'legacygpu_worker_memory_rss_bytes{worker="w1"}' in text
    summary = one_worker.http.get("/cluster/metrics").json()
    assert summary["tasks_by_phase"]["Succeeded"] == 1 and summary["latency_ms"]["p50"] > 0


def test_websocket_streams_task_events(one_worker: LocalCluster) -> None:
    from websockets.sync.client import connect

    ws_url = one_worker.url.replace("http", "ws") + "/ws/cluster/events"
    with connect(f"{ws_url}?token=wrong") as ws:
        with pytest.raises(Exception) as closed:
            ws.recv(timeout=5)
        assert "4401" in str(closed.value)
    with connect(f"{ws_url}?token={TOKEN}") as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello" and "tasks_by_phase" in hello["object"]
        task = one_worker.submit(model="digits", inputs=[image_tensor(SAMPLES / "digit-4.png")])
        seen: list[tuple[str, str]] = []
        while ("task.updated", "Succeeded") not in seen:
            event = json.loads(ws.recv(timeout=30))
            if event["type"].startswith("task.") and event["object"]["id"] == task["id"]:
                seen.append((event["type"], event["object"]["phase"]))
        assert seen[0] == ("task.created", "Queued")
        assert ("task.updated", "Running") in seen


def test_websocket_without_any_token_is_refused(cluster: LocalCluster) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url = cluster.url.replace("http", "ws") + "/ws/cluster/events"  # no query token, no header
    with connect(url) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert closed.value.rcvd.reason == "missing or invalid token"


def test_openapi_docs_are_served(cluster: LocalCluster) -> None:
    docs = httpx.get(f"{cluster.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text
    schema = httpx.get(f"{cluster.url}/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/cluster/tasks/submit", "/cluster/tasks/{task_id}/status", "/cluster/tasks/{task_id}/cancel",
                 "/cluster/workers/register", "/cluster/health"):
        assert path in paths, path


def test_task_listing_filters_by_worker_and_model(cluster: LocalCluster, tmp_path: Path) -> None:
    from helpers import slow_model

    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx

    tiny = slow_model(tmp_path / "tiny.onnx", layers=1, rows=2, width=8)
    ModelRepository(cluster.data_dir / "models").add(card_from_onnx("tiny", tiny), tiny)
    # No worker yet: this task is never assigned, and fails on its deadline.
    orphan = cluster.submit(model="tiny", inputs=[{"name": "x", "shape": [1, 8], "datatype": "FP32",
                                                   "data": [1.0] * 8}], timeout_seconds=1)
    cluster.wait_phase(orphan["id"], {"Failed"})
    cluster.start_worker("w1")
    worker = cluster.worker("w1")
    assert worker is not None
    good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    digits = {cluster.submit(model="digits", inputs=[good])["id"] for _ in range(2)}
    for task_id in digits:
        cluster.wait_phase(task_id, {"Succeeded"})

    def ids(**params: str) -> set[str]:
        page = cluster.http.get("/cluster/tasks", params=params).json()
        assert page["count"] == len(page["data"]), params
        return {task["id"] for task in page["data"]}

    assert ids() == digits | {orphan["id"]}
    assert ids(model="tiny") == {orphan["id"]}
    assert ids(model="digits") == digits
    assert ids(worker=worker["id"]) == digits
    assert ids(worker=worker["id"], model="tiny") == set()
    assert ids(worker="w-nobody") == set()


def test_cancel_over_http_returns_the_cancelled_task(cluster: LocalCluster) -> None:
    good = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    task = cluster.submit(model="digits", inputs=[good])  # no worker: it stays Queued
    response = cluster.http.post(f"/cluster/tasks/{task['id']}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["id"] == task["id"] and cancelled["model"] == "digits"
    assert cancelled["phase"] == "Cancelled" and cancelled["result"] is None
    assert cluster.task(task["id"])["phase"] == "Cancelled"
    again = cluster.http.post(f"/cluster/tasks/{task['id']}/cancel")
    assert again.status_code == 409 and "already Cancelled" in again.json()["detail"]
