"""The worker's TaskRunner on the OpenCL backend (PoCL and rusticl): a request too big for the device fails alone."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES, image_tensor

from legacygpu.core.errors import ModelError
from legacygpu.core.modelcards import ModelRepository
from legacygpu.worker.backends.opencl import OpenCLBackend
from legacygpu.worker.runner import TaskRunner


@pytest.fixture
def runner(demo_repository: Path, tmp_path: Path, dctx) -> TaskRunner:  # dctx: one per platform
    shutil.copytree(demo_repository, tmp_path / "models")
    backend = OpenCLBackend(dctx.info.index)
    assert backend.runtime.dctx.info.driver_family == dctx.info.driver_family
    return TaskRunner(ModelRepository(tmp_path / "models"), backend)


def _rows(n: int) -> dict:
    data = np.random.default_rng(0).uniform(0, 16, (n, 64)).astype(np.float32)
    return {"name": "input", "shape": [n, 64], "datatype": "FP32", "data": data.ravel().tolist()}


def test_oversized_request_is_a_model_error_and_the_worker_keeps_serving(
    runner: TaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = runner.backend
    assert isinstance(backend, OpenCLBackend)
    first = runner.run("digits", [image_tensor(SAMPLES / "digit-6.png")])
    assert first["top_k"][0]["label"] == "6"
    # a device with 512 KiB: the weights and a batch of one fit, 1024 rows (256 KiB of input alone,
    # 512 KiB of hidden activations) do not
    dctx = backend.runtime.dctx
    monkeypatch.setattr(dctx, "info", dataclasses.replace(dctx.info, global_mem_bytes=512 * 1024))
    with pytest.raises(ModelError, match=r"MiB of device memory .*smaller batch"):
        runner.run("digits", [_rows(1024)])
    for digit in (3, 6):
        result = runner.run("digits", [image_tensor(SAMPLES / f"digit-{digit}.png")])
        assert result["top_k"][0]["label"] == str(digit) and result["model"] == "digits"
    assert len(runner.run("digits", [_rows(16)])["top_k_batch"]) == 16  # a batch that fits still runs
    assert runner.loaded_models() == ["digits"]
