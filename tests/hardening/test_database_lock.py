"""A database locked by another process, against a real facade process: the loop keeps answering.

Another connection holds SQLite's write lock (``BEGIN EXCLUSIVE``) for
longer than the facade's busy timeout while several submits wait on it.
The facade runs its database work on a thread of its own, so meanwhile
``/cluster/health`` answers (within a client timeout shorter than the
submits' combined wait, which a loop blocked by SQLite could not meet) and
reports the lock; each submit gets 503 with ``Retry-After``; after the
lock is released everything accepted before it is still there and new work
is accepted again.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import TOKEN, LocalCluster

GOOD = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
BUSY_TIMEOUT = 2.0
BLOCKED_SUBMITS = 4
"""Queued on the database thread one after another, they wait BLOCKED_SUBMITS * BUSY_TIMEOUT in all."""


@pytest.fixture
def facade(tmp_path: Path, demo_repository: Path) -> Iterator[LocalCluster]:
    data = tmp_path / "data"
    shutil.copytree(demo_repository, data / "models")
    cluster = LocalCluster(data, env={"LEGACYGPU_DATABASE_BUSY_TIMEOUT_SECONDS": str(BUSY_TIMEOUT)})
    cluster.start_api()
    try:
        yield cluster
    finally:
        cluster.stop()


def submit(url: str) -> httpx.Response:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
        return http.post("/cluster/tasks/submit", json={"model": "digits", "inputs": [GOOD]})


def test_a_locked_database_keeps_health_answering_and_loses_nothing(facade: LocalCluster) -> None:
    before = [facade.submit(model="digits", inputs=[GOOD])["id"] for _ in range(3)]
    healthy = facade.http.get("/cluster/health").json()
    assert healthy["database"] == "ok" and healthy["database_message"] is None

    blocker = sqlite3.connect(str(facade.data_dir / "cluster.db"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with ThreadPoolExecutor(BLOCKED_SUBMITS) as pool:
            pending = [pool.submit(submit, facade.url) for _ in range(BLOCKED_SUBMITS)]
            time.sleep(0.5)  # let the submits reach the facade and queue on its database thread
            # Shorter than the submits' combined wait: only a loop that SQLite does not block answers in time.
            health = httpx.get(f"{facade.url}/cluster/health", timeout=BUSY_TIMEOUT * BLOCKED_SUBMITS / 2)
            assert health.status_code == 200
            assert health.json()["database"] == "locked" and health.json()["status"] == "degraded", health.text
            assert "locked" in health.json()["database_message"]
            answers = [f.result() for f in pending]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"].isdigit() and "database is locked" in answer.json()["detail"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert facade.http.get("/cluster/health").json()["database"] == "ok"
    after = facade.submit(model="digits", inputs=[GOOD])["id"]
    listed = facade.http.get("/cluster/tasks", params={"limit": 100}).json()
    assert listed["count"] == 4 and {t["id"] for t in listed["data"]} == {*before, after}, "accepted means kept"
    assert "database unavailable during POST /cluster/tasks/submit: database is locked" in _log(facade)


def _log(facade: LocalCluster) -> str:
    path = facade.logs / "api.log"
    return path.read_text() if path.exists() else ""
