"""``POST /cluster/tasks/submit-many`` and ``task submit`` with several inputs: a real facade and worker on loopback.

Several tasks in one request are checked as one submit checks one, stored
together (all or none: a bad one names its place, ``tasks[i]``, and nothing
is stored), answered in the order given, and run like any other task.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import SAMPLES, TOKEN, LocalCluster, image_tensor

from legacygpu.api.schemas import MAX_TASKS_PER_SUBMIT
from legacygpu.cli.task import command as task_command

GOOD = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}


def stored(cluster: LocalCluster) -> int:
    return int(cluster.http.get("/cluster/tasks").json()["count"])


def test_many_tasks_in_one_request_run_in_the_order_given(cluster: LocalCluster) -> None:
    cluster.start_worker("w1")
    digits = [3, 1, 4, 1, 5, 9, 2, 6]
    body = {"tasks": [{"model": "digits", "inputs": [image_tensor(SAMPLES / f"digit-{d}.png")], "priority": i}
                      for i, d in enumerate(digits)]}
    r = cluster.http.post("/cluster/tasks/submit-many", json=body)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["count"] == len(digits) == len(answer["data"])
    assert [t["priority"] for t in answer["data"]] == list(range(len(digits))), "answered in the order given"
    assert {t["phase"] for t in answer["data"]} == {"Queued"} and len({t["id"] for t in answer["data"]}) == 8
    for digit, task in zip(digits, answer["data"], strict=True):
        done = cluster.wait_phase(task["id"], {"Succeeded", "Failed"})
        assert done["phase"] == "Succeeded" and done["attempts"] == 1, done
        assert done["result"]["top_k"][0]["label"] == str(digit)


@pytest.mark.parametrize(("tasks", "status", "detail"), [
    ([{"model": "digits", "inputs": [GOOD]}, {"model": "nope", "inputs": [GOOD]}], 422, "tasks[1]: unknown model"),
    ([{"model": "digits", "inputs": [GOOD]}, {"model": "digits", "inputs": [{**GOOD, "shape": [1, 3]}]}], 422,
     "tasks[1]: "),
    ([{"model": "digits", "inputs": [GOOD], "parameters": {"k": "v" * 70_000}}], 413, "tasks[0]: parameters"),
    ([], 422, "tasks"),
    ([{"model": "digits", "inputs": [GOOD]}] * (MAX_TASKS_PER_SUBMIT + 1), 422, "tasks"),
    ([{"model": "digits", "inputs": [GOOD], "colour": "red"}], 422, "tasks.0.colour"),
])
def test_one_bad_task_refuses_the_request_naming_it_and_stores_none(
    cluster: LocalCluster, tasks: list[dict[str, object]], status: int, detail: str
) -> None:
    before = stored(cluster)
    r = cluster.http.post("/cluster/tasks/submit-many", json={"tasks": tasks})
    assert r.status_code == status and detail in r.json()["detail"], r.text
    assert stored(cluster) == before, "nothing of a refused request is stored"


def test_task_submit_with_several_inputs_sends_one_request_and_waits_for_all(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster.start_worker("w1")
    runner = CliRunner()
    api = ["--api", cluster.url, "--token", TOKEN]
    inputs = [arg for d in (7, 2) for arg in ("-i", str(SAMPLES / f"digit-{d}.png"))]
    result = runner.invoke(task_command, ["submit", "-m", "digits", *inputs, "--wait", "-o", "json", *api])
    assert result.exit_code == 0, result.output
    finished = json.loads(result.stdout)
    assert [t["result"]["top_k"][0]["label"] for t in finished] == ["7", "2"]
    assert finished[0]["created_at"] == finished[1]["created_at"], "stored together, by one request"
    result = runner.invoke(task_command, ["submit", "-m", "digits", "-i", str(SAMPLES / "digit-0.png"), "-o", "json",
                                          *api])
    assert result.exit_code == 0 and json.loads(result.stdout)["model"] == "digits", "one input: one task, as before"
