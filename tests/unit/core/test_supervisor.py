"""The local cluster's supervisor maps devices to worker processes."""

from __future__ import annotations

from pathlib import Path

from legacygpu.cli.supervisor import Supervisor


def test_each_worker_gets_its_device_index(tmp_path: Path) -> None:
    supervisor = Supervisor(data_dir=tmp_path, host="127.0.0.1", port=8123, devices=[1, 3], token="t")
    argvs = [w.argv for w in supervisor.workers]
    assert [a[a.index("--device-index") + 1] for a in argvs] == ["1", "3"]
    assert [a[a.index("--name") + 1] for a in argvs] == ["local-0", "local-1"]
    assert supervisor.api.argv[-6:] == ["--port", "8123", "--data-dir", str(tmp_path), "--log-level", "warning"]


def test_cpu_workers_leave_the_device_to_the_backend(tmp_path: Path) -> None:
    supervisor = Supervisor(data_dir=tmp_path, host="127.0.0.1", port=8123, devices=[None, None], token="t")
    assert len(supervisor.workers) == 2
    assert all("--device-index" not in w.argv for w in supervisor.workers)
    assert supervisor.workers[0].env["LEGACYGPU_API_URL"] == "http://127.0.0.1:8123"
