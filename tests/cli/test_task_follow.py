"""``task submit --wait`` follows the facade's event stream, and falls back to polling without it.

A real facade process on loopback; the "worker" is this test speaking the
worker's HTTP protocol (register, take the pushed task, report it:
:class:`taskfakes.FakeWorker`), so it can hold a task running for as long as
it likes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TOKEN, LocalCluster, free_port
from taskfakes import FakeWorker

from legacygpu.cli import follow
from legacygpu.cli.client import ApiClient

HOLD_SECONDS = 1.5
INPUTS = [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]


class CountingClient(ApiClient):
    """The CLI's client, counting the GETs of each path."""

    def __init__(self, url: str) -> None:
        super().__init__(url, TOKEN)
        self.gets: list[str] = []

    def get(self, path: str, **kwargs: Any) -> Any:
        self.gets.append(path)
        return super().get(path, **kwargs)


def fake_worker(cluster: LocalCluster) -> threading.Thread:
    """Registers, takes the one task pushed to it, holds it HOLD_SECONDS, reports it."""
    worker = FakeWorker(cluster.http, cluster.join)

    def work() -> None:
        task = worker.next_task(timeout=60)
        time.sleep(HOLD_SECONDS)
        worker.report({"task_id": task["id"], "attempt": task["attempt"], "result": {"answer": 42}}).raise_for_status()
        worker.stop()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_wait_follows_the_event_stream_without_polling(cluster: LocalCluster) -> None:
    worker = fake_worker(cluster)
    client = CountingClient(cluster.url)
    phases: list[str] = []
    with follow.open_events(client) as stream:
        assert stream is not None, "the facade's event stream should open"
        task = client.post("/cluster/tasks/submit", json={"model": "digits", "inputs": INPUTS})
        done = follow.follow(client, task["id"], stream, on_change=lambda t: phases.append(t["phase"]), timeout=60)
    worker.join(10)
    assert done["phase"] == "Succeeded" and done["result"] == {"answer": 42}
    assert phases[-1] == "Succeeded" and "Running" in phases, phases
    # Polling every 0.1 s over a task held 1.5 s would GET it about 15 times; the stream needs one fetch.
    assert client.gets == [f"/cluster/tasks/{task['id']}"]


def test_wait_falls_back_to_polling_when_the_stream_cannot_be_opened(cluster: LocalCluster) -> None:
    worker = fake_worker(cluster)
    client = CountingClient(cluster.url)
    with follow.open_events(client, url=f"ws://127.0.0.1:{free_port()}/ws/cluster/events") as stream:
        assert stream is None
        task = client.post("/cluster/tasks/submit", json={"model": "digits", "inputs": INPUTS})
        done = follow.follow(client, task["id"], stream, timeout=60)
    worker.join(10)
    assert done["phase"] == "Succeeded" and done["result"] == {"answer": 42}
    assert len(client.gets) > 1, "without a stream the task is polled"


def test_a_wrong_token_means_no_stream_rather_than_a_hang(cluster: LocalCluster) -> None:
    client = ApiClient(cluster.url, "wrong-token")
    with follow.open_events(client) as stream:
        assert stream is None


@pytest.fixture
def logged_cluster(data_dir: Path) -> Iterator[LocalCluster]:
    """A facade process as ``cluster`` starts it, but logging at info: its log shows each WebSocket it accepts."""
    c = LocalCluster(data_dir)
    try:
        c.start_api(log_level="info")
        yield c
    finally:
        c.stop()


def _task_gets(cluster: LocalCluster) -> float:
    """GETs the facade has answered on any one task's routes (``/cluster/tasks/{task_id}...``), from its metrics."""
    text = cluster.http.get("/metrics").text
    found = re.findall(r'^legacygpu_http_requests_total\{(.*)\} (\S+)$', text, re.MULTILINE)
    return sum(float(value) for labels, value in found
               if 'method="GET"' in labels and 'route="/cluster/tasks/{task_id}' in labels)


def test_the_cli_command_follows_the_event_stream_rather_than_polling(logged_cluster: LocalCluster,
                                                                      tmp_path: Path) -> None:
    """``legacygpu task submit --wait`` as a user runs it, on a task a worker holds Running for 1.5 s: the
    facade accepts its event stream and answers it at most a few GETs of the task (polling every 0.1 s would
    take about fifteen), and the CLI prints the result."""
    cluster = logged_cluster
    tensor = tmp_path / "input.json"
    tensor.write_text(json.dumps(INPUTS[0]))
    worker = fake_worker(cluster)
    before = _task_gets(cluster)
    done = subprocess.run([sys.executable, "-m", "legacygpu.cli", "task", "submit", "-m", "digits", "-i",
                           str(tensor), "--wait"], env=cluster.env, capture_output=True, text=True, timeout=120)
    worker.join(10)
    assert done.returncode == 0, done.stderr
    assert re.search(r"task task-\S+: Succeeded", done.stdout), done.stdout
    assert "Running" in done.stderr, done.stderr  # the phases shown as they came
    gets = _task_gets(cluster) - before
    assert 1 <= gets <= 3, f"the CLI fetched the task {gets:.0f} times: it polled rather than followed the stream"
    log = (cluster.logs / "api.log").read_text()
    assert '"WebSocket /ws/cluster/events" [accepted]' in log, log[-2000:]
