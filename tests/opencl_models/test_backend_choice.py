"""The backend seam: create_backend names, the onnxruntime backend's contract, shared input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from legacygpu.core.errors import ModelError, ValidationError
from legacygpu.worker.backends import create_backend, gpu_present
from legacygpu.worker.opencl import device
from legacygpu.worker.opencl.device import DeviceInfo


def test_unknown_backend_name_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="unknown backend 'cuda'"):
        create_backend("cuda")


def _fake_device(index: int, device_type: str) -> DeviceInfo:
    """A DeviceInfo as discover() would report it, without the hardware."""
    name = "Ellesmere" if device_type == "gpu" else "pthread-cpu"
    return DeviceInfo(
        index=index, platform="fake", name=name, vendor="fake", device_type=device_type, compute_units=4,
        global_mem_bytes=2**30, max_alloc_bytes=2**28, local_mem_bytes=2**15, max_clock_mhz=1000,
        opencl_version="OpenCL 1.2", driver_version="1.0", fp16=False, legacy_family=None, pci_id=None,
        is_legacy_amd=False,
    )  # fmt: skip


@pytest.fixture
def fake_devices(monkeypatch: pytest.MonkeyPatch):
    """Make discover() report the given device types; returns the setter."""

    def set_types(*types: str) -> None:
        found = [_fake_device(i, t) for i, t in enumerate(types)]
        monkeypatch.setattr(device, "discover", lambda: list(found))

    return set_types


def test_auto_picks_opencl_when_discovery_reports_a_gpu(fake_devices) -> None:
    fake_devices("cpu", "gpu")
    assert gpu_present() and not gpu_present(0) and gpu_present(1) and not gpu_present(2)
    # the real device opened here is PoCL: auto only looks at what discovery reports
    assert create_backend("auto").name == "opencl"


@pytest.mark.parametrize("types", [("cpu",), ()])
def test_auto_picks_onnxruntime_without_a_gpu(fake_devices, types: tuple[str, ...]) -> None:
    fake_devices(*types)
    assert not gpu_present()
    assert create_backend("auto").name == "onnxruntime"


def test_gpu_present_is_false_when_discovery_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[DeviceInfo]:
        raise device.DeviceNotFoundError("pyopencl is not installed")

    monkeypatch.setattr(device, "discover", broken)
    assert not gpu_present()
    assert create_backend("auto").name == "onnxruntime"


def test_onnxruntime_runs_digits(digits_model: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, x, y = digits_model
    model = create_backend("onnxruntime").load(path)
    assert model.input_names == ["input"]
    assert set(model.output_names) == {"label", "probabilities"}
    out = model.run({"input": x})
    assert out["probabilities"].shape == (len(x), 10)
    assert (out["label"] == y).mean() > 0.9
    # float64 is the same kind: cast, not refused; batch size may change per call
    assert model.run({"input": x[:3].astype(np.float64)})["label"].shape == (3,)


@pytest.mark.parametrize("backend_name", ["onnxruntime", "opencl"])
def test_wrong_inputs_are_validation_errors(
    backend_name: str, digits_model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    path, x, _ = digits_model
    model = create_backend(backend_name).load(path)
    with pytest.raises(ValidationError, match="unknown input"):
        model.run({"x": x})
    with pytest.raises(ValidationError, match="missing input"):
        model.run({})
    with pytest.raises(ValidationError, match="axis 1"):
        model.run({"input": np.zeros((2, 63), np.float32)})
    with pytest.raises(ValidationError, match="rank"):
        model.run({"input": np.zeros((64,), np.float32)})
    with pytest.raises(ValidationError, match="dtype"):
        model.run({"input": np.array([["a"] * 64])})


@pytest.mark.parametrize("backend_name", ["onnxruntime", "opencl"])
def test_missing_and_truncated_files_are_model_errors(
    backend_name: str, tmp_path: Path, digits_model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    backend = create_backend(backend_name)
    with pytest.raises(ModelError, match="does not exist"):
        backend.load(tmp_path / "nope.onnx")
    data = digits_model[0].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"truncated\.onnx"):
        backend.load(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf at all \x00\xff" * 10)
    with pytest.raises(ModelError, match=r"garbage\.onnx"):
        backend.load(garbage)
