"""Driver stacks: classification from what drivers report, the preferred stack for a Polaris card, per-driver defaults.

The strings are those the drivers report (rusticl and PoCL read here, the others
from their documentation and bug reports), since no RX 580 is attached here.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from types import SimpleNamespace

import pytest

from legacygpu.worker.opencl import device as devmod
from legacygpu.worker.opencl.drivers import cl_version, driver_family, preference
from legacygpu.worker.opencl.gemm import SHAPE_CLASSES, default_params, kernel_style
from legacygpu.worker.opencl.tuning import candidates

RX580_RUSTICL = "AMD Radeon RX 580 Series (radeonsi, polaris10, LLVM 15.0.6, DRM 3.49, 6.1.0-18-amd64)"
RX580_CLOVER = "AMD Radeon RX 580 Series (polaris10, LLVM 15.0.6, DRM 3.49, 6.1.0-18-amd64)"


@pytest.mark.parametrize(
    ("platform", "version", "name", "family"),
    [
        ("Portable Computing Language", "OpenCL 3.0 PoCL 3.1+debian", "pthread-haswell-AMD EPYC", "pocl"),
        ("rusticl", "OpenCL 3.0 ", "llvmpipe (LLVM 15.0.6, 256 bits)", "rusticl"),
        ("rusticl", "OpenCL 3.0 ", RX580_RUSTICL, "rusticl"),
        ("Clover", "OpenCL 1.1 Mesa 22.3.6", RX580_CLOVER, "clover"),
        ("AMD Accelerated Parallel Processing", "OpenCL 2.1 AMD-APP (3423.0)", "Ellesmere", "amd"),
        ("AMD Accelerated Parallel Processing", "OpenCL 2.1 AMD-APP (3.0)", "gfx803", "rocm"),
        ("NVIDIA CUDA", "OpenCL 3.0 CUDA 12.2", "NVIDIA GeForce GTX 1080", "other"),
    ],
)
def test_driver_family(platform: str, version: str, name: str, family: str) -> None:
    assert driver_family(platform, version, name) == family


def test_cl_version() -> None:
    assert cl_version("OpenCL 1.1 Mesa 22.3.6") == (1, 1)
    assert cl_version("OpenCL 3.0 PoCL HSTR: pthread") == (3, 0)
    assert cl_version("garbage") == (1, 0)


def test_preference_puts_pocl_first_among_cpus_and_amd_then_rusticl_among_gpus() -> None:
    gpus = sorted(["clover", "rocm", "rusticl", "amd"], key=lambda f: preference(f, "gpu"))
    assert gpus == ["amd", "rusticl", "clover", "rocm"]
    assert preference("pocl", "cpu") < preference("rusticl", "cpu")


def test_the_real_devices_here_are_classified(dctx) -> None:
    info = dctx.info
    assert info.driver_family in ("pocl", "rusticl")
    assert info.to_dict()["driver_family"] == info.driver_family
    assert info.cl_version >= (1, 1)
    assert kernel_style(info) == {"pocl": "cpu", "rusticl": "lanes"}[info.driver_family]


class _FakeCL:
    class command_queue_properties:
        PROFILING_ENABLE = 2

    @staticmethod
    def Context(devices):
        return ("ctx", tuple(devices))

    @staticmethod
    def CommandQueue(ctx, dev, properties=0):
        return ("queue", dev)


def _info(index: int, platform: str, name: str, device_type: str, cus: int, legacy: bool, version: str) -> object:
    return devmod.DeviceInfo(
        index=index, platform=platform, name=name, vendor="AMD", device_type=device_type, compute_units=cus,
        global_mem_bytes=1, max_alloc_bytes=1, local_mem_bytes=32768, max_clock_mhz=1, opencl_version=version,
        driver_version="22.3.6", fp16=False, legacy_family="polaris" if legacy else None, pci_id=None,
        is_legacy_amd=legacy, platform_version=version, max_work_group_size=256,
    )  # fmt: skip


@pytest.fixture
def debian12_with_rx580(monkeypatch):
    """What a Debian 12 host with an RX 580 lists: PoCL's CPU, then the card on Clover and on rusticl."""
    found = [
        _info(0, "Portable Computing Language", "pthread-haswell", "cpu", 16, False, "OpenCL 3.0 PoCL"),
        _info(1, "Clover", RX580_CLOVER, "gpu", 36, True, "OpenCL 1.1 Mesa 22.3.6"),
        _info(2, "rusticl", RX580_RUSTICL, "gpu", 36, True, "OpenCL 3.0 "),
        _info(3, "rusticl", "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", 16, False, "OpenCL 3.0 "),
    ]
    pairs = [(info, SimpleNamespace(name=info.name, extensions="")) for info in found]
    monkeypatch.setattr(devmod, "_walk", lambda: pairs)
    monkeypatch.setitem(sys.modules, "pyopencl", _FakeCL)
    for var in ("LEGACYGPU_OPENCL_DEVICE", "LEGACYGPU_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return pairs


def test_discovery_prefers_rusticl_for_a_polaris_card_and_says_so(debian12_with_rx580, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=devmod.__name__):
        dctx = devmod.open_device()
    assert dctx.info.index == 2 and dctx.info.driver_family == "rusticl"
    assert "chose OpenCL device 2" in caplog.text and "driver stack rusticl" in caplog.text
    assert f"1: {RX580_CLOVER} (clover)" in caplog.text  # what it was preferred over
    # AMD's legacy driver, where installed, comes first
    amd = _info(4, "AMD Accelerated Parallel Processing", "Ellesmere", "gpu", 36, True, "OpenCL 2.0 AMD-APP")
    debian12_with_rx580.append((amd, SimpleNamespace(name="Ellesmere", extensions="")))
    assert devmod.open_device().info.index == 4
    # among CPU devices PoCL beats llvmpipe, though llvmpipe reports as many compute units
    assert devmod.open_device(prefer="cpu").info.index == 0


def test_untuned_defaults_follow_the_driver_stack(dctx) -> None:
    """PoCL's wide CPU blocks, llvmpipe's SIMD lanes, GPU tiles for radeonsi, Clover and AMD's driver."""
    styles = {
        "pocl": dataclasses.replace(dctx.info, platform="Portable Computing Language", device_type="cpu"),
        "llvmpipe": dataclasses.replace(dctx.info, platform="rusticl", device_type="cpu"),
        "radeonsi": dataclasses.replace(dctx.info, platform="rusticl", device_type="gpu", max_work_group_size=256,
                                        local_mem_bytes=32768),
        "clover": dataclasses.replace(dctx.info, platform="Clover", device_type="gpu", max_work_group_size=256,
                                      local_mem_bytes=32768, opencl_version="OpenCL 1.1 Mesa"),
        "amd": dataclasses.replace(dctx.info, platform="AMD Accelerated Parallel Processing", name="Ellesmere",
                                   device_type="gpu", max_work_group_size=256, local_mem_bytes=32768),
    }  # fmt: skip
    assert [kernel_style(i) for i in styles.values()] == ["cpu", "lanes", "gpu", "gpu", "gpu"]
    for cls in SHAPE_CLASSES:
        pocl, lanes = default_params(styles["pocl"], cls), default_params(styles["llvmpipe"], cls)
        assert pocl.vw == 16 and not pocl.local  # one work-item = a wide SIMD block
        # 8 work-items per SIMD register, blocks of at most 64 accumulators (CLBlast's 8x8), no local memory
        assert lanes.ndimc % 8 == 0 and lanes.mwi * lanes.nwv * lanes.vw <= 64 and not lanes.local
        gpu = {default_params(styles[s], cls) for s in ("radeonsi", "clover", "amd")}
        assert len(gpu) == 1 and (cls == "gemv" or gpu.pop().local)
        # the llvmpipe search space keeps to its style, the default first
        found = candidates(styles["llvmpipe"], cls, count=12)
        assert found[0].params == lanes
        assert all(c.params.ndimc % 8 == 0 and c.params.mwi * c.params.nwv * c.params.vw <= 64 for c in found)


def test_setup_and_worker_image_provide_rusticl() -> None:
    """make setup installs rusticl (both platforms in make test); the worker image enables it for radeonsi."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    apt = re.search(r"^APT_PACKAGES :=((?:.*\\\n)*.*)$", makefile, re.M)
    assert apt is not None and "mesa-opencl-icd" in apt.group(1).split()
    dockerfile = (root / "Dockerfile.worker").read_text()
    assert "mesa-opencl-icd" in dockerfile
    assert re.search(r"^ENV RUSTICL_ENABLE=radeonsi\s*$", dockerfile, re.M)
