"""``legacygpu worker start`` options that reach the worker's backend (the worker itself is a stand-in here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from legacygpu.cli import worker as worker_cli
from legacygpu.core.config import CONCURRENT_RUNS_ENV
from legacygpu.worker import local_worker
from legacygpu.worker.backends import create_backend


class _Worker:
    """Builds its backend as LocalWorker does and records how many runs it takes, then leaves at once."""

    concurrent_runs: list[int] = []

    def __init__(self, *, backend: str, **_: Any) -> None:
        _Worker.concurrent_runs.append(create_backend(backend).concurrent_runs)
        self.runner = None

    def routes(self) -> list[Any]:
        return []

    def run(self) -> int:
        return 0


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    monkeypatch.setattr(local_worker, "LocalWorker", _Worker)
    monkeypatch.setattr(worker_cli, "_start_serving", lambda *_args, **_kwargs: None)
    # Nothing the command does to this process outlives the test: its signal handlers, malloc settings, and
    # the variable it sets (empty reads as unset, and monkeypatch puts back what was there).
    monkeypatch.setattr(worker_cli.signal, "signal", lambda *_args: None)
    monkeypatch.setattr(worker_cli, "keep_freed_memory", lambda: False)
    monkeypatch.setenv(CONCURRENT_RUNS_ENV, "")
    monkeypatch.setenv("LEGACYGPU_DATA_DIR", str(tmp_path))
    _Worker.concurrent_runs = []
    return _Worker.concurrent_runs


def _start(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(worker_cli.command, ["start", "--backend", "onnxruntime", "--token", "t", *args],
                              env=env)


@pytest.mark.parametrize(("args", "env", "runs"), [
    ((), None, 2),
    (("--concurrent-runs", "1"), None, 1),
    ((), {CONCURRENT_RUNS_ENV: "1"}, 1),
    (("--concurrent-runs", "3"), {CONCURRENT_RUNS_ENV: "1"}, 3),
])
def test_concurrent_runs_from_the_flag_or_the_environment_reach_the_backend(
        stand_in: list[int], args: tuple[str, ...], env: dict[str, str] | None, runs: int) -> None:
    result = _start(*args, env=env)
    assert result.exit_code == 0, result.output
    assert stand_in == [runs]


def test_concurrent_runs_below_one_is_a_usage_error(stand_in: list[int]) -> None:
    result = _start("--concurrent-runs", "0")
    assert result.exit_code == 2
    assert "--concurrent-runs" in result.output and "0 is not in the range x>=1" in result.output
    assert stand_in == []
