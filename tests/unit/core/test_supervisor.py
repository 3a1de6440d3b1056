"""The local cluster's supervisor: devices to worker processes, and which exited workers it restarts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from legacygpu.cli.supervisor import Supervisor, _Child, crashed, local_devices


def test_each_worker_gets_its_device_index(tmp_path: Path) -> None:
    supervisor = Supervisor(data_dir=tmp_path, host="127.0.0.1", port=8123, devices=[1, 3], token="t")
    argvs = [w.argv for w in supervisor.workers]
    assert [a[a.index("--device-index") + 1] for a in argvs] == ["1", "3"]
    assert [a[a.index("--name") + 1] for a in argvs] == ["local-0", "local-1"]
    assert supervisor.api.argv[-6:] == ["--port", "8123", "--data-dir", str(tmp_path), "--log-level", "warning"]
    assert supervisor.api.argv[-8:-6] == ["--grpc-port", "-1"]  # no gRPC unless asked (cluster start asks)


def test_cpu_workers_leave_the_device_to_the_backend(tmp_path: Path) -> None:
    supervisor = Supervisor(data_dir=tmp_path, host="127.0.0.1", port=8123, devices=[None, None], token="t")
    assert len(supervisor.workers) == 2
    assert all("--device-index" not in w.argv for w in supervisor.workers)
    assert supervisor.workers[0].env["LEGACYGPU_API_URL"] == "http://127.0.0.1:8123"


def _fake_device(index: int, device_type: str) -> SimpleNamespace:
    return SimpleNamespace(index=index, name=f"dev{index}-{device_type}", device_type=device_type)


def test_local_devices_falls_back_to_the_cpu_without_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from legacygpu.worker.opencl import device

    monkeypatch.setattr(device, "discover", lambda: [])
    devices, what = local_devices()
    assert devices == [None] and "CPU" in what


def test_local_devices_takes_one_worker_per_gpu_and_skips_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from legacygpu.worker.opencl import device

    found = [_fake_device(0, "gpu"), _fake_device(1, "cpu"), _fake_device(2, "gpu")]
    monkeypatch.setattr(device, "discover", lambda: found)
    devices, what = local_devices()
    assert devices == [0, 2]
    assert what == "dev0-gpu, dev2-gpu"


def test_local_devices_survives_a_broken_opencl(monkeypatch: pytest.MonkeyPatch) -> None:
    from legacygpu.worker.opencl import device

    def broken() -> list[SimpleNamespace]:
        raise RuntimeError("clGetPlatformIDs failed")

    monkeypatch.setattr(device, "discover", broken)
    assert local_devices()[0] == [None]


def _exited(code: int) -> subprocess.Popen[bytes]:
    """A real child process that has already exited with ``code`` (negative: killed by that signal)."""
    if code < 0:
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        process.send_signal(-code)
    else:
        process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    process.wait(timeout=30)
    return process


def test_crashed_workers_restart_but_drained_ones_stay_stopped(tmp_path: Path) -> None:
    supervisor = Supervisor(data_dir=tmp_path, host="127.0.0.1", port=8123, devices=[None] * 4, token="t")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor.api.process = running  # the facade is up
    drained, failed, killed, alive = supervisor.workers
    drained.process, failed.process, killed.process = _exited(0), _exited(3), _exited(-signal.SIGKILL)
    alive.process = running
    spawned: list[str] = []

    def spawn(child: _Child) -> None:  # stands in for a real process that keeps running
        spawned.append(child.name)
        child.process = running

    supervisor._spawn = spawn  # type: ignore[method-assign]
    try:
        assert supervisor.watch_once() == [failed.name, killed.name]
        for _ in range(5):  # the next cycles leave the drained worker stopped
            assert supervisor.watch_once() == []
        assert spawned == [failed.name, killed.name]
        assert drained.finished and drained.restarts == 0 and failed.restarts == killed.restarts == 1
    finally:
        running.kill()
        running.wait()


def test_crashed_reads_exit_codes() -> None:
    assert not crashed(None) and not crashed(0)
    assert crashed(1) and crashed(-signal.SIGKILL)
