"""CLI papercuts, each against a real facade process: marked column drops, ``monitor`` quitting on ``q``,
JSON ending with a newline, a deadline message in the user's terms."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LocalCluster, wait_until

from legacygpu.cli.output import table

from .test_worker_and_cli import run_cli

GOOD = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[LocalCluster]:
    data = tmp_path_factory.mktemp("papercuts") / "data"
    shutil.copytree(demo_repository, data / "models")
    cluster = LocalCluster(data, env={"LEGACYGPU_HEARTBEAT_TIMEOUT_SECONDS": "600"})
    cluster.start_api()
    cluster.join.post("/cluster/workers/register", json={"name": "listed-worker"}).raise_for_status()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_table_too_wide_says_which_columns_it_dropped() -> None:
    rows = [{"a": "x" * 10, "b": "y" * 10, "c": "z" * 10}]
    columns = [("A", lambda r: r["a"]), ("B", lambda r: r["b"]), ("C", lambda r: r["c"])]
    full = table(rows, columns)
    assert "C" in full.splitlines()[0] and "not shown" not in full
    cut = table(rows, columns, width=25).splitlines()
    assert cut[0].split() == ["A", "B"] and all(len(line) <= 25 for line in cut[:2])
    assert cut[-1].startswith("(not shown") and "C;" in cut[-1] and "-o json" in cut[-1]
    assert table(rows, columns, width=200) == full


def test_the_cli_marks_the_columns_a_narrow_terminal_drops(facade: LocalCluster) -> None:
    narrow = run_cli({**facade.env, "COLUMNS": "50"}, "cluster", "workers", "list", timeout=60)
    assert narrow.returncode == 0, narrow.stderr
    last = narrow.stdout.rstrip("\n").splitlines()[-1]
    assert last.startswith("(not shown, too wide for 50 columns:") and "PID" in last, narrow.stdout
    piped = run_cli({k: v for k, v in facade.env.items() if k != "COLUMNS"}, "cluster", "workers", "list",
                    timeout=60)
    assert "PID" in piped.stdout.splitlines()[0] and "not shown" not in piped.stdout, "a pipe gets every column"


def test_json_output_ends_with_a_newline(facade: LocalCluster) -> None:
    for args in (("cluster", "workers", "list"), ("task", "list"), ("model", "list")):
        out = run_cli(facade.env, *args, "-o", "json", timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith("}\n") or out.stdout.endswith("]\n"), (args, out.stdout[-20:])
        json.loads(out.stdout)


def test_monitor_quits_on_q(facade: LocalCluster) -> None:
    """A real pseudo-terminal as stdin and stdout: the live view draws, reads keys, and ends on ``q`` with 0."""
    primary, secondary = pty.openpty()
    monitor = subprocess.Popen(
        [sys.executable, "-m", "legacygpu.cli", "monitor", "--interval", "0.2"],
        env={**facade.env, "COLUMNS": "120"}, stdin=secondary, stdout=secondary, stderr=subprocess.PIPE,
    )
    os.close(secondary)
    try:
        out = b""
        while b"listed-worker" not in out:  # the first frame is drawn: the live loop is running
            chunk = os.read(primary, 65536)
            assert chunk, monitor.stderr.read()  # type: ignore[union-attr]
            out += chunk
        os.write(primary, b"q")
        assert monitor.wait(timeout=30) == 0
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()
        os.close(primary)


def test_a_missed_deadline_is_explained_in_the_users_terms(facade: LocalCluster) -> None:
    task = facade.submit(model="digits", inputs=[GOOD], timeout_seconds=1)  # the fake worker never runs it
    failed = wait_until(lambda: (t := facade.task(task["id"]))["phase"] == "Failed" and t, timeout=60,
                        what="the deadline")
    assert failed["reason"] == "DeadlineExceeded"
    assert "timeoutSeconds" not in failed["message"] and "--timeout" in failed["message"], failed["message"]
    shown = run_cli(facade.env, "task", "status", task["id"], timeout=60)
    assert "timeoutSeconds" not in shown.stdout + shown.stderr
