"""A model that outputs NaN fails its task without hurting the worker; the CLI's errors say what to do.

Real processes throughout: a facade and an onnxruntime worker on loopback,
and ``legacygpu`` run as a user runs it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import LocalCluster, free_port

from legacygpu.core.modelcards import ModelCard, ModelRepository, TensorSpec


def sqrt_model(path: Path) -> Path:
    """``y = sqrt(x)`` on FP32 [1, 4]: finite inputs, NaN outputs for negative ones."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "legacygpu.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_nan_output_fails_the_task_once_and_the_worker_keeps_serving(cluster: LocalCluster, tmp_path: Path) -> None:
    card = ModelCard(name="sqrt", inputs=[TensorSpec(name="x", shape=[1, 4])], outputs=[TensorSpec(name="y")])
    ModelRepository(cluster.data_dir / "models").add(card, sqrt_model(tmp_path / "sqrt.onnx"))
    cluster.start_worker("w1")
    pid = cluster.workers["w1"].pid
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32"}
    bad = cluster.submit(model="sqrt", inputs=[{**tensor, "data": [4.0, -1.0, 9.0, -4.0]}], max_retries=3)
    failed = cluster.wait_phase(bad["id"], {"Succeeded", "Failed"})
    assert failed["phase"] == "Failed" and failed["reason"] == "ModelError", failed
    assert "2 non-finite value(s) (NaN or Infinity) in output 'y'" in failed["message"]
    assert failed["attempts"] == 1, "a model's NaN is not the worker's fault: no retry on another worker"
    good = cluster.submit(model="sqrt", inputs=[{**tensor, "data": [4.0, 1.0, 9.0, 16.0]}])
    done = cluster.wait_phase(good["id"], {"Succeeded", "Failed"})
    assert done["phase"] == "Succeeded" and done["result"]["outputs"][0]["data"] == [2.0, 1.0, 3.0, 4.0]
    assert cluster.workers["w1"].poll() is None and cluster.worker("w1")["pid"] == pid, "the same worker, alive"

    # `task result` on the failed task: the reason, and exit 1 like `submit --wait`; `--api` without a scheme.
    env = {**cluster.env, "LEGACYGPU_API_URL": "http://127.0.0.1:1"}  # wrong on purpose: --api must win
    out = run_cli(env, "task", "result", bad["id"], "--api", cluster.url.removeprefix("http://"))
    assert out.returncode == 1, out.stderr
    assert "Failed (ModelError" in out.stdout and "worker None" not in out.stdout


def test_an_unreachable_facade_is_reported_once_with_what_to_do(tmp_path: Path) -> None:
    port = free_port()
    out = run_cli({**os.environ, "LEGACYGPU_DATA_DIR": str(tmp_path)}, "task", "list", "--api", f"127.0.0.1:{port}")
    assert out.returncode == 4
    assert f"cannot reach the facade at http://127.0.0.1:{port}" in out.stderr and ".." not in out.stderr
    assert "--api" in out.stderr and "Traceback" not in out.stderr


def test_model_add_refuses_a_path_as_name_without_a_traceback(tmp_path: Path) -> None:
    model = sqrt_model(tmp_path / "m.onnx")
    env = {**os.environ, "LEGACYGPU_DATA_DIR": str(tmp_path / "data")}
    out = run_cli(env, "model", "add", "../../x", str(model))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "model name '../../x' is not valid" in out.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "data" / "x").exists()
    assert run_cli(env, "model", "add", "ok", str(model)).returncode == 0
    again = run_cli(env, "model", "add", "ok", str(model))
    assert again.returncode == 1 and "--replace" in again.stderr and "replace=True" not in again.stderr


def test_cluster_start_on_a_busy_port_fails_fast_and_says_so(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "LEGACYGPU_DATA_DIR": str(data_dir)}
        env.pop("LEGACYGPU_API_TOKEN", None)
        started = time.monotonic()
        out = run_cli(env, "cluster", "start", "--port", str(port), "--workers", "1", timeout=120)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "--port" in out.stderr
        assert "legacygpu is running" not in out.stdout, "no banner for a cluster that is not running"
        assert time.monotonic() - started < 60
    assert not (data_dir / "cluster.pid").exists() or not (data_dir / "cluster.pid").read_text().strip()


def test_banner_names_the_api_off_the_default_port() -> None:
    from legacygpu.cli.cluster import _banner

    text = _banner("http://127.0.0.1:18601", "tok", Path("/tmp/d"), None)
    line = next(line for line in text.splitlines() if " task submit " in line)
    assert line.endswith("--wait --api http://127.0.0.1:18601")


def test_model_check_takes_a_model_name_from_the_repository(data_dir: Path) -> None:
    env = {**os.environ, "LEGACYGPU_DATA_DIR": str(data_dir)}
    out = run_cli(env, "model", "check", "digits", "--backend", "onnxruntime", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert '"outputs"' in out.stdout
    missing = run_cli(env, "model", "check", "nope", "--backend", "onnxruntime")
    assert missing.returncode == 1 and "unknown model 'nope'" in missing.stderr and "digits" in missing.stderr
    assert "Traceback" not in missing.stderr
