"""The ``legacygpu`` command line against a real facade and worker, run as a user would (subprocesses)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import SAMPLES, LocalCluster, free_port, wait_until


class ClusterStart:
    """``legacygpu cluster start`` as a subprocess; a thread collects its output so a test can wait for a line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        # In a session of its own, so kill() can take its facade and workers down with it.
        self.process = subprocess.Popen([sys.executable, "-m", "legacygpu.cli", "cluster", "start", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self._lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, timeout: float = 240) -> str:
        """All output so far, once ``text`` is in it (an AssertionError at once if the process ended without it)."""

        def seen() -> str | None:
            out = self.output
            if text in out:
                return out
            if self.process.poll() is not None:
                raise AssertionError(f"`cluster start` exited with code {self.process.returncode}")
            return None

        try:
            return wait_until(seen, timeout=timeout, interval=0.2, what=f"{text!r} in the output of `cluster start`")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its output so far:\n{self.output}") from None

    def kill(self) -> None:
        """SIGKILL to the supervisor and every process it started (a failed test must leave none behind)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def cluster_started(env: dict[str, str], workers: int) -> Iterator[tuple[ClusterStart, str]]:
    """``cluster start`` on the port of ``env``'s API URL, once its banner is out; killed on the way out."""
    port = env["LEGACYGPU_API_URL"].rsplit(":", 1)[1]
    cluster = ClusterStart(env, "--port", port, "--workers", str(workers))
    try:
        yield cluster, cluster.wait_for("Ctrl-C stops the cluster")
    finally:
        cluster.kill()


def run_cli(env: dict[str, str] | None, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``legacygpu ARGS`` as a user runs it: a new process, text output captured."""
    return subprocess.run([sys.executable, "-m", "legacygpu.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def cli(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_cli(cluster.env, *args)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def one_worker(cluster: LocalCluster) -> LocalCluster:
    cluster.start_worker("w1")
    return cluster


def test_submit_image_wait_json(one_worker: LocalCluster) -> None:
    out = cli(one_worker, "task", "submit", "--model", "digits", "--input", str(SAMPLES / "digit-2.png"), "--wait",
              "--output", "json")
    task = json.loads(out.stdout)
    assert task["phase"] == "Succeeded" and task["id"].startswith("task-")
    assert task["result"]["top_k"][0]["label"] == "2"


def test_submit_npy_and_json_tensor(one_worker: LocalCluster, tmp_path: Path) -> None:
    array = np.zeros((2, 64), dtype=np.float64)
    np.save(tmp_path / "x.npy", array)
    task = json.loads(cli(one_worker, "task", "submit", "-m", "digits", "-i", str(tmp_path / "x.npy"), "-w",
                          "-o", "json").stdout)
    assert task["phase"] == "Succeeded"
    assert len(task["result"]["top_k_batch"]) == 2, "a batch of two gives two top-k lists"
    (tmp_path / "x.json").write_text(json.dumps({"shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}))
    task = json.loads(cli(one_worker, "task", "submit", "-m", "digits", "-i", str(tmp_path / "x.json"), "-w",
                          "-o", "json").stdout)
    assert task["phase"] == "Succeeded" and task["result"]["outputs"][1]["shape"] == [1, 10]


def test_listings_status_result_cancel_in_json(one_worker: LocalCluster) -> None:
    submitted = json.loads(cli(one_worker, "task", "submit", "-m", "digits", "-i", str(SAMPLES / "digit-5.png"),
                               "-o", "json").stdout)
    one_worker.wait_phase(submitted["id"], {"Succeeded"})
    tasks = json.loads(cli(one_worker, "task", "list", "--output", "json").stdout)
    assert tasks["count"] == 1 and tasks["data"][0]["id"] == submitted["id"]
    status = json.loads(cli(one_worker, "task", "status", submitted["id"], "-o", "json").stdout)
    assert status["phase"] == "Succeeded" and status["attempts"] == 1
    result = json.loads(cli(one_worker, "task", "result", submitted["id"], "-o", "json").stdout)
    assert result["result"]["top_k"][0]["label"] == "5"
    workers = json.loads(cli(one_worker, "cluster", "workers", "list", "-o", "json").stdout)
    assert [w["name"] for w in workers["data"]] == ["w1"] and workers["data"][0]["tasks_succeeded"] == 1
    models = json.loads(cli(one_worker, "model", "list", "-o", "json").stdout)
    assert models["data"][0]["name"] == "digits" and models["data"][0]["metrics"]["accuracy"] > 0.9
    table = cli(one_worker, "task", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "MODEL", "PHASE"] and submitted["id"] in table
    refused = cli(one_worker, "task", "cancel", submitted["id"], check=False)
    assert refused.returncode == 1 and "already Succeeded" in refused.stderr
    status_text = cli(one_worker, "cluster", "status").stdout
    assert "Succeeded 1" in status_text and "active 1" in status_text


def test_errors_are_clear_with_exit_codes(one_worker: LocalCluster, tmp_path: Path) -> None:
    unknown = cli(one_worker, "task", "submit", "-m", "nope", "-i", str(SAMPLES / "digit-1.png"), check=False)
    assert unknown.returncode == 1 and "unknown model 'nope'" in unknown.stderr
    missing = cli(one_worker, "task", "status", "task-missing", check=False)
    assert missing.returncode == 3 and "task-missing" in missing.stderr
    env = {**one_worker.env, "LEGACYGPU_API_TOKEN": "wrong"}
    denied = run_cli(env, "task", "list", timeout=60)
    assert denied.returncode == 5 and "invalid token" in denied.stderr
    env = {**one_worker.env, "LEGACYGPU_API_URL": f"http://127.0.0.1:{free_port()}"}
    down = run_cli(env, "task", "list", timeout=60)
    assert down.returncode == 4 and "cannot reach the facade" in down.stderr


def test_worker_stop_drains(one_worker: LocalCluster) -> None:
    worker = one_worker.worker("w1")
    assert worker is not None
    out = json.loads(cli(one_worker, "worker", "stop", worker["id"], "-o", "json").stdout)
    assert out["state"] == "draining"
    assert one_worker.workers["w1"].wait(timeout=30) == 0


def test_model_add_with_card(cluster: LocalCluster, tmp_path: Path) -> None:
    from helpers import slow_model

    onnx_path = slow_model(tmp_path / "tiny.onnx", layers=1, rows=2, width=8)
    card = tmp_path / "card.yaml"
    card.write_text("name: ignored\ndescription: a tiny test model\ntask: regression\n")
    out = cli(cluster, "model", "add", "tiny", str(onnx_path), "--card", str(card))
    assert "added model 'tiny'" in out.stdout
    models = {m["name"]: m for m in json.loads(cli(cluster, "model", "list", "-o", "json").stdout)["data"]}
    assert models["tiny"]["description"] == "a tiny test model"
    assert models["tiny"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 8]}]
    again = cli(cluster, "model", "add", "tiny", str(onnx_path), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(onnx_path.read_bytes()[:50])
    bad = cli(cluster, "model", "add", "broken", str(broken), check=False)
    assert bad.returncode == 1 and "not a readable ONNX model" in bad.stderr


WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_CARD = f"""\
name: ignored
task: image-classification
inputs:
  - name: input
    datatype: FP32
    shape: [-1, 64]
    image: {{color: grayscale, size: [8, 8], crop_to_content: true, invert: true, scale: [0.0, 16.0], layout: flat}}
postprocess:
  output: probabilities
  softmax: true
  top_k: 2
  labels: {json.dumps(WORDS)}
"""


def test_model_add_with_an_image_card_classifies_with_its_labels(cluster: LocalCluster, tmp_path: Path) -> None:
    """A card with image pre-processing, softmax, top_k and labels of its own, on the demo network's ONNX."""
    card = tmp_path / "card.yaml"
    card.write_text(IMAGE_CARD)
    onnx_path = cluster.data_dir / "models" / "digits" / "model.onnx"
    assert "added model 'words'" in cli(cluster, "model", "add", "words", str(onnx_path), "--card", str(card)).stdout
    listed = {m["name"]: m for m in json.loads(cli(cluster, "model", "list", "-o", "json").stdout)["data"]}
    assert listed["words"]["labels"] == len(WORDS) and listed["words"]["inputs"][0]["image"]["invert"] is True
    cluster.start_worker("w1")
    task = json.loads(cli(cluster, "task", "submit", "-m", "words", "-i", str(SAMPLES / "digit-3.png"), "-w",
                          "-o", "json").stdout)
    assert task["phase"] == "Succeeded", task
    top_k = task["result"]["top_k"]
    assert [entry["label"] for entry in top_k][:1] == ["three"] and len(top_k) == 2
    raw = next(o for o in task["result"]["outputs"] if o["name"] == "probabilities")["data"]
    expected = np.exp(raw) / np.exp(raw).sum()  # the card's softmax over the network's own probabilities
    assert [e["index"] for e in top_k] == list(np.argsort(-expected)[:2])
    assert [e["score"] for e in top_k] == pytest.approx(list(np.sort(expected)[::-1][:2]))
    assert top_k[0]["score"] < max(raw), "softmax flattens probabilities that were already normalised"


def test_submit_wait_text_shows_progress_then_the_top_classes(cluster: LocalCluster) -> None:
    process = subprocess.Popen([sys.executable, "-m", "legacygpu.cli", "task", "submit", "-m", "digits", "-i",
                                str(SAMPLES / "digit-6.png"), "--wait"], env=cluster.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # No worker yet: the task can only be Queued, and the progress shows it before a worker exists.
        wait_until(lambda: cluster.http.get("/cluster/tasks", params={"phase": "Queued"}).json()["count"] == 1,
                   timeout=60, what="the submitted task to be Queued")
        cluster.start_worker("w1")
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    progress = [line.split()[0] for line in stderr.splitlines() if line.startswith("  ")]
    order = ["Pending", "Queued", "Scheduled", "Running", "Succeeded"]
    assert progress[0] == "Queued" and progress[-1] == "Succeeded", stderr
    assert progress == sorted(progress, key=order.index) and len(set(progress)) == len(progress), stderr
    assert stderr.startswith("submitted task-")
    lines = stdout.splitlines()
    assert lines[0].startswith("task task-") and lines[0].endswith(": Succeeded")
    assert lines[1] == "top classes:"
    top = [line.split() for line in lines[2:5]]
    assert top[0][0] == "6" and all(len(row) == 2 for row in top)
    scores = [float(row[1]) for row in top]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert any(line.startswith("latency ") and "attempts 1, worker " in line for line in lines)


def _command_tree(command: Any, path: tuple[str, ...], parent: Any = None) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``command`` (itself included) with its path, the lazy groups' commands imported."""
    import click

    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join(path)} lists {name!r} but cannot load it"
            yield from _command_tree(sub, (*path, name), ctx)


def test_help_everywhere() -> None:
    import click

    from legacygpu.cli import main

    tree = list(_command_tree(main, ("legacygpu",)))
    assert len(tree) > 30, "the walk reaches the lazily imported groups"
    missing = set()
    for path, command in tree:
        if not (command.help or command.short_help):
            missing.add(path)
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.add((*path, param.opts[0]))
    assert not missing, f"without help text: {sorted(missing)}"
    for args in (["--help"], ["cluster", "start", "--help"], ["bench", "model", "--help"]):
        out = run_cli(None, *args, timeout=60)
        assert out.returncode == 0 and "Usage:" in out.stdout and "--help" in out.stdout, args


def _cluster_env(data_dir: Path) -> dict[str, str]:
    port = free_port()
    env = {**os.environ, "LEGACYGPU_DATA_DIR": str(data_dir), "LEGACYGPU_API_URL": f"http://127.0.0.1:{port}"}
    env.pop("LEGACYGPU_API_TOKEN", None)
    return env


def _workers(env: dict[str, str]) -> list[dict[str, Any]]:
    out = run_cli(env, "cluster", "workers", "list", "-o", "json", timeout=60)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["data"])


def test_cluster_start_runs_everything_and_ctrl_c_stops_it(data_dir: Path) -> None:
    env = _cluster_env(data_dir)
    with cluster_started(env, workers=2) as (cluster, banner):
        token = (data_dir / "api-token").read_text().strip()
        assert f"token     : {token}" in banner and f"/ui#token={token}" in banner
        admin = (data_dir / "admin-token").read_text().strip()
        assert f"admin     : {admin}" in banner and admin != token, "the admin token is printed, and is not the user's"
        assert (data_dir / "join-token").stat().st_mode & 0o777 == 0o600
        assert "2/2 worker(s) registered" in banner
        # The copy-paste example works from a terminal whose PATH has no .venv/bin (as after `make run`).
        example = next(line for line in banner.splitlines() if " task submit " in line)
        argv = shlex.split(example)
        assert Path(argv[0]).is_absolute() and Path(argv[0]).exists(), example
        out = subprocess.run(argv, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
                             cwd="/")
        assert out.returncode == 0 and "top classes:" in out.stdout, out.stderr
        out = run_cli(env, "task", "submit", "-m", "digits", "-i", str(SAMPLES / "digit-8.png"), "-w", "-o", "json",
                      timeout=120)
        assert json.loads(out.stdout)["result"]["top_k"][0]["label"] == "8"
        pids = [w["pid"] for w in _workers(env)]
        assert len(pids) == 2
        cluster.process.send_signal(signal.SIGINT)
        assert cluster.process.wait(timeout=60) == 0
        for pid in pids:
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=10, what=f"worker {pid} to exit")
        assert not (data_dir / "cluster.pid").exists()


def test_worker_stopped_under_cluster_start_stays_stopped(data_dir: Path) -> None:
    env = _cluster_env(data_dir)
    with cluster_started(env, workers=2) as (cluster, _):
        victim = next(w for w in _workers(env) if w["name"] == "local-0")
        stop = run_cli(env, "worker", "stop", victim["id"], timeout=60)
        assert stop.returncode == 0, stop.stderr
        # The supervisor's decision, logged in the cycle that sees the drained worker's exit; a supervisor
        # that restarts it logs "starting it again" instead, and would never say this.
        output = cluster.wait_for("worker-0 exited cleanly (drained or stopped); not starting it again")
        assert "starting it again" not in output.replace("not starting it again", "")
        workers = _workers(env)
        assert len(workers) == 2, "no fresh worker registered in place of the drained one"
        assert {w["name"]: w["state"] for w in workers} == {"local-0": "stopped", "local-1": "active"}
        cluster.process.send_signal(signal.SIGINT)
        assert cluster.process.wait(timeout=60) == 0


def test_cluster_stop_from_another_terminal(data_dir: Path) -> None:
    env = _cluster_env(data_dir)
    with cluster_started(env, workers=1) as (cluster, _):
        stop = run_cli(env, "cluster", "stop", timeout=90)
        assert stop.returncode == 0 and "cluster stopped" in stop.stdout, stop.stderr
        assert cluster.process.wait(timeout=30) == 0
        again = run_cli(env, "cluster", "stop", timeout=60)
        assert again.returncode == 1 and "no cluster is running" in again.stderr


def test_processes_of_a_killed_cluster_start_stop_too(data_dir: Path) -> None:
    """kill -9 of the supervisor (it cannot stop anything then): its facade and workers still go."""
    env = _cluster_env(data_dir)
    with cluster_started(env, workers=1) as (cluster, _):
        pids = [w["pid"] for w in _workers(env)]
        cluster.process.kill()  # the supervisor alone; its children are in sessions of their own
        cluster.process.wait()
        for pid in pids:
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=30, what=f"worker {pid} to exit")

        def facade_gone() -> bool:
            try:
                httpx.get(f"{env['LEGACYGPU_API_URL']}/cluster/health", timeout=1)
            except httpx.TransportError:
                return True
            return False

        wait_until(facade_gone, timeout=30, what="the facade to stop answering")
