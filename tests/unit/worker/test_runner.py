"""The task runner: card-driven inference, model caching and preloading."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, image_tensor

from legacygpu.core.config import CONCURRENT_RUNS_ENV
from legacygpu.core.errors import UnknownModelError, ValidationError
from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.backends import create_backend
from legacygpu.worker.backends.onnxruntime import OnnxRuntimeBackend
from legacygpu.worker.runner import TaskRunner, preload_from_env


@pytest.fixture
def repository(demo_repository: Path, tmp_path: Path) -> ModelRepository:
    shutil.copytree(demo_repository, tmp_path / "models")
    return ModelRepository(tmp_path / "models")


def test_run_classifies_an_image_and_caches_the_model(repository: ModelRepository) -> None:
    runner = TaskRunner(repository, create_backend("onnxruntime"))
    result = runner.run("digits", [image_tensor(SAMPLES / "digit-6.png")])
    assert result["top_k"][0]["label"] == "6" and result["model"] == "digits"
    assert runner.loaded_models() == ["digits"] and runner.last_compute_ms is not None
    with pytest.raises(UnknownModelError):
        runner.run("nope", [image_tensor(SAMPLES / "digit-6.png")])
    with pytest.raises(ValidationError, match="shape"):
        runner.run("digits", [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}])


def test_preload_from_env_loads_known_models_and_skips_broken_ones(
    repository: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = repository.root / "broken"
    shutil.copytree(repository.root / "digits", broken)
    (broken / "card.yaml").write_text((broken / "card.yaml").read_text().replace("name: digits", "name: broken"))
    (broken / "model.onnx").write_bytes(b"truncated")
    runner = TaskRunner(repository, create_backend("onnxruntime"))
    monkeypatch.setenv("LEGACYGPU_PRELOAD_MODELS", "digits, broken,missing")
    assert preload_from_env(runner) == ["digits"]
    assert runner.loaded_models() == ["digits"]
    monkeypatch.delenv("LEGACYGPU_PRELOAD_MODELS")
    assert preload_from_env(TaskRunner(repository, create_backend("onnxruntime"))) == []


def test_sessions_block_instead_of_spinning_and_run_sequentially(repository: ModelRepository) -> None:
    import onnxruntime

    model = OnnxRuntimeBackend(threads=1).load(repository.model_path("digits"))
    options = model._session.get_session_options()  # type: ignore[attr-defined]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == 1
    default = OnnxRuntimeBackend().load(repository.model_path("digits"))
    assert default._session.get_session_options().intra_op_num_threads == 0  # type: ignore[attr-defined]


def test_try_run_feeds_runs_only_when_it_need_not_wait(repository: ModelRepository) -> None:
    runner = TaskRunner(repository, create_backend("onnxruntime"))
    feeds = {"input": np.zeros((1, 64), np.float32)}
    assert runner.try_run_feeds("digits", feeds) is None  # not loaded: loading is the device thread's job
    runner.load("digits")
    expected = runner.run_feeds("digits", feeds)
    got = runner.try_run_feeds("digits", feeds)
    assert got is not None and set(got) == set(expected)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    with runner._lock:  # a load (or, on a backend running one at a time, a run) holds the lock
        assert runner.try_run_feeds("digits", feeds) is None
    path = repository.model_path("digits")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file was replaced
    assert runner.try_run_feeds("digits", feeds) is None


@pytest.mark.parametrize("concurrent_runs", [1, 2])
def test_try_run_runs_a_task_only_when_it_need_not_wait(repository: ModelRepository, concurrent_runs: int) -> None:
    """:meth:`TaskRunner.try_run` (a lone task in a push's answer) declines as :meth:`try_run_feeds` does, and
    otherwise gives what :meth:`run` gives, one run at a time or not."""
    runner = TaskRunner(repository, OnnxRuntimeBackend(concurrent_runs=concurrent_runs))
    inputs = [image_tensor(SAMPLES / "digit-6.png")]
    assert runner.try_run("digits", inputs) is None, "not loaded: loading is the task loop's job"
    expected = runner.run("digits", inputs)
    ran = runner.try_run("digits", inputs)
    assert ran is not None and ran[0] == expected and ran[1] > 0
    with runner._lock:  # a load (or, one run at a time, a run) holds the lock
        assert runner.try_run("digits", inputs) is None
    for _ in range(concurrent_runs):  # every run slot taken
        runner._slots.acquire()
    assert runner.try_run("digits", inputs) is None
    for _ in range(concurrent_runs):
        runner._slots.release()
    assert runner.try_run("digits", inputs) is not None, "free again"
    with pytest.raises(UnknownModelError):
        runner.try_run("nope", inputs)


class _Gated:
    """The real onnxruntime backend, whose runs wait at a gate the test opens, counting those inside."""

    name = "gated"

    def __init__(self, concurrent_runs: int) -> None:
        self.real = OnnxRuntimeBackend(concurrent_runs=concurrent_runs)
        self.concurrent_runs = self.real.concurrent_runs
        self.gate = threading.Event()
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Condition()

    def load(self, path: Path) -> _Gated:
        self.model = self.real.load(path)
        return self

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.entered:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.entered.notify_all()
        self.gate.wait(10)
        try:
            return self.model.run(feeds)
        finally:
            with self.entered:
                self.inside -= 1


@pytest.mark.parametrize("concurrent_runs", [1, 2])
def test_runs_go_side_by_side_as_far_as_the_backend_takes_them(repository: ModelRepository,
                                                               concurrent_runs: int) -> None:
    backend = _Gated(concurrent_runs)
    runner = TaskRunner(repository, backend)  # type: ignore[arg-type]
    assert runner.concurrent_runs == concurrent_runs
    runner.load("digits")
    x = np.random.default_rng(0).uniform(0, 16, (2, 64)).astype(np.float32)
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(runner.run_feeds, "digits", {"input": x}) for _ in range(3)]
        with backend.entered:
            assert backend.entered.wait_for(lambda: backend.inside == concurrent_runs, 10)
        time.sleep(0.1)  # the third run must still wait
        assert backend.inside == concurrent_runs
        assert runner.try_run_feeds("digits", {"input": x}) is None  # every run slot is taken
        backend.gate.set()
        results = [run.result(10)["probabilities"] for run in runs]
    assert backend.most_inside == concurrent_runs
    expected = backend.model.run({"input": x})["probabilities"]
    assert all(np.array_equal(r, expected) for r in results)
    assert runner.try_run_feeds("digits", {"input": x}) is not None  # free again


def test_backends_say_how_many_runs_go_at_once() -> None:
    assert OnnxRuntimeBackend().concurrent_runs == 2
    assert OnnxRuntimeBackend(concurrent_runs=1).concurrent_runs == 1


@pytest.mark.parametrize(("setting", "runs"), [(None, 2), ("", 2), ("1", 1), ("3", 3)])
def test_the_concurrent_runs_setting_reaches_the_backend_and_runner(monkeypatch: pytest.MonkeyPatch,
                                                                    repository: ModelRepository,
                                                                    setting: str | None, runs: int) -> None:
    if setting is None:
        monkeypatch.delenv(CONCURRENT_RUNS_ENV, raising=False)
    else:
        monkeypatch.setenv(CONCURRENT_RUNS_ENV, setting)
    assert TaskRunner(repository, create_backend("onnxruntime")).concurrent_runs == runs


@pytest.mark.parametrize("setting", ["0", "-1", "two", "1.5"])
def test_a_concurrent_runs_setting_that_is_not_a_positive_integer_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                                             setting: str) -> None:
    monkeypatch.setenv(CONCURRENT_RUNS_ENV, setting)
    with pytest.raises(ValidationError, match=f"{CONCURRENT_RUNS_ENV} must be a positive integer, not '{setting}'"):
        create_backend("onnxruntime")
    with pytest.raises(ValidationError, match="concurrent_runs must be at least 1, not 0"):
        OnnxRuntimeBackend(concurrent_runs=0)
