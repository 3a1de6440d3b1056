"""``legacygpu monitor`` against a real facade and a real worker process.

The cluster is started once for the module (a facade plus one worker on a
free loopback port) and given a known mix of tasks: two that succeed, one
that no worker can take (it asks for more device memory than any has) and
so stays queued, and one such task cancelled. Each phase then has a count no
other phase shares, so the frame's numbers can be checked one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import SAMPLES, TOKEN, LocalCluster, cluster_with_worker, free_port, image_tensor

from legacygpu.cli.monitor import command

WORKER = "monitor-w1"
UNSCHEDULABLE = {"min_vram_mib": 10**9}


@pytest.fixture(scope="module")
def busy_cluster(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[LocalCluster]:
    with cluster_with_worker(tmp_path_factory.mktemp("monitor") / "data", demo_repository, WORKER) as cluster:
        for digit in (4, 6):
            task = cluster.submit(model="digits", inputs=[image_tensor(SAMPLES / f"digit-{digit}.png")])
            cluster.wait_phase(task["id"], {"Succeeded"})
        cluster.submit(model="digits", inputs=[image_tensor(SAMPLES / "digit-1.png")], requirements=UNSCHEDULABLE)
        doomed = cluster.submit(model="digits", inputs=[image_tensor(SAMPLES / "digit-1.png")],
                                requirements=UNSCHEDULABLE)
        assert cluster.http.post(f"/cluster/tasks/{doomed['id']}/cancel").status_code == 200
        yield cluster


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_once_frame_shows_the_worker_and_task_counts(busy_cluster: LocalCluster) -> None:
    code, out = _run("--once", "--api", busy_cluster.url, "--token", TOKEN)
    assert code == 0, out
    assert busy_cluster.url in out
    worker_line = next(line for line in out.splitlines() if WORKER in line)
    assert re.search(r"\bactive\b", worker_line)
    assert "onnxruntime" in worker_line
    expected = {"Pending": 0, "Queued": 1, "Scheduled": 0, "Running": 0, "Succeeded": 2, "Failed": 0, "Cancelled": 1}
    for phase, count in expected.items():
        assert re.search(rf"\b{phase} {count}\b", out), f"{phase} {count} not in:\n{out}"
    assert "workers 1/1 active" in out
    # the recent-tasks table lists all four, newest first, with the worker's name on the finished ones
    assert len(re.findall(r"task-[0-9a-f]{12}", out)) == 4
    assert sum(1 for line in out.splitlines() if "Succeeded" in line and WORKER in line) == 2
    assert re.search(r"Cancelled \(\w+\)", out)


def test_tasks_option_limits_the_table(busy_cluster: LocalCluster) -> None:
    code, out = _run("--once", "--tasks", "1", "--api", busy_cluster.url, "--token", TOKEN)
    assert code == 0
    assert len(re.findall(r"task-[0-9a-f]{12}", out)) == 1
    code, out = _run("--once", "--tasks", "0", "--api", busy_cluster.url, "--token", TOKEN)
    assert code == 0
    assert "Recent tasks" not in out and WORKER in out


def test_live_view_refreshes_and_stops_after_count(busy_cluster: LocalCluster) -> None:
    code, out = _run("--count", "2", "--interval", "0.1", "--api", busy_cluster.url, "--token", TOKEN)
    assert code == 0, out
    assert WORKER in out
    assert re.search(r"\bSucceeded 2\b", out)


def test_wrong_token_is_an_auth_error(busy_cluster: LocalCluster) -> None:
    code, out = _run("--once", "--api", busy_cluster.url, "--token", "wrong")
    assert code == 5
    assert "invalid token" in out
    assert WORKER not in out


def test_unreachable_facade_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out = _run("--once", "--api", url, "--token", TOKEN)
    assert code == 4
    assert f"cannot reach the facade at {url}" in out
