"""The ``legacygpu`` command line against a real facade and worker, run as a user would (subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, LocalCluster, free_port, wait_until


def cli(cluster: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "legacygpu.cli", *args], env=cluster.env, capture_output=True,
                            text=True, timeout=180)
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
    denied = subprocess.run([sys.executable, "-m", "legacygpu.cli", "task", "list"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert denied.returncode == 5 and "invalid token" in denied.stderr
    env = {**one_worker.env, "LEGACYGPU_API_URL": f"http://127.0.0.1:{free_port()}"}
    down = subprocess.run([sys.executable, "-m", "legacygpu.cli", "task", "list"], env=env, capture_output=True,
                          text=True, timeout=60)
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


def test_help_everywhere() -> None:
    for args in (["--help"], ["cluster", "--help"], ["cluster", "start", "--help"], ["task", "submit", "--help"],
                 ["worker", "start", "--help"], ["model", "add", "--help"]):
        out = subprocess.run([sys.executable, "-m", "legacygpu.cli", *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Usage:" in out.stdout and "--help" in out.stdout, args


def test_cluster_start_runs_everything_and_ctrl_c_stops_it(data_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "LEGACYGPU_DATA_DIR": str(data_dir), "LEGACYGPU_API_URL": f"http://127.0.0.1:{port}"}
    env.pop("LEGACYGPU_API_TOKEN", None)
    process = subprocess.Popen([sys.executable, "-m", "legacygpu.cli", "cluster", "start", "--port", str(port),
                                "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops the cluster" in line:
                break
        banner = "".join(lines)
        token = (data_dir / "api-token").read_text().strip()
        assert f"token     : {token}" in banner and f"/ui#token={token}" in banner
        assert "2/2 worker(s) registered" in banner
        out = subprocess.run([sys.executable, "-m", "legacygpu.cli", "task", "submit", "-m", "digits", "-i",
                              str(SAMPLES / "digit-8.png"), "-w", "-o", "json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert json.loads(out.stdout)["result"]["top_k"][0]["label"] == "8"
        pids = [w["pid"] for w in json.loads(subprocess.run(
            [sys.executable, "-m", "legacygpu.cli", "cluster", "workers", "list", "-o", "json"], env=env,
            capture_output=True, text=True, timeout=60).stdout)["data"]]
        assert len(pids) == 2
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        for pid in pids:
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), timeout=10, what=f"worker {pid} to exit")
        assert not (data_dir / "cluster.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()


def test_cluster_stop_from_another_terminal(data_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "LEGACYGPU_DATA_DIR": str(data_dir), "LEGACYGPU_API_URL": f"http://127.0.0.1:{port}"}
    process = subprocess.Popen([sys.executable, "-m", "legacygpu.cli", "cluster", "start", "--port", str(port),
                                "--workers", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Ctrl-C stops the cluster" in line:
                break
        stop = subprocess.run([sys.executable, "-m", "legacygpu.cli", "cluster", "stop"], env=env,
                              capture_output=True, text=True, timeout=90)
        assert stop.returncode == 0 and "cluster stopped" in stop.stdout, stop.stderr
        assert process.wait(timeout=30) == 0
        again = subprocess.run([sys.executable, "-m", "legacygpu.cli", "cluster", "stop"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "no cluster is running" in again.stderr
    finally:
        if process.poll() is None:
            process.kill()
