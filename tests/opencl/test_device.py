"""Device discovery and legacy-GPU identification.

Identification is tested on the strings real drivers report (Mesa Clover,
rusticl, AMD's legacy OpenCL, ROCm) since no Polaris card is attached here;
discovery and `legacygpu devices` run for real on PoCL.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from legacygpu.cli import main as cli
from legacygpu.worker.opencl import device as devmod
from legacygpu.worker.opencl.device import DeviceNotFoundError, discover, identify_legacy_family, open_device

AMD = "Advanced Micro Devices, Inc."


@pytest.mark.parametrize(
    ("name", "kwargs", "family"),
    [
        # Mesa Clover
        (
            "AMD Radeon RX 580 Series (POLARIS10, DRM 3.42.0, 5.15.0, LLVM 12.0.0)",
            {"vendor": "AMD"},
            "polaris",
        ),
        ("AMD Radeon (TM) RX 470 Graphics (POLARIS10, DRM 3.40.0, 5.10.0, LLVM 11.0.1)", {"vendor": "AMD"}, "polaris"),
        # Mesa rusticl
        (
            "AMD Radeon RX 590 Series (radeonsi, polaris10, LLVM 15.0.6, DRM 3.49, 6.1.0-18-amd64)",
            {"vendor": "AMD"},
            "polaris",
        ),
        ("AMD Radeon RX 560 Series (radeonsi, polaris11, LLVM 15.0.6, DRM 3.49)", {"vendor_id": 0x1002}, "polaris"),
        # AMD APP / amdgpu-pro: codename as the name, marketing name as the board name
        ("Ellesmere", {"vendor": AMD, "board_name": "Radeon RX 580 Series"}, "polaris"),
        ("Baffin", {"vendor": AMD}, "polaris"),
        ("Fiji", {"vendor": AMD, "board_name": "AMD Radeon R9 Fury Series"}, "fiji"),
        ("Tonga", {"vendor": AMD}, "tonga"),
        # ROCm
        ("gfx803", {"vendor": AMD}, "polaris"),
        # PCI ids win even when the name says nothing
        ("AMD Radeon Graphics", {"pci_id": "1002:67df"}, "polaris"),
        ("unknown", {"pci_id": "1002:6FDF"}, "polaris"),
        ("unknown", {"pci_id": "1002:67ef"}, "polaris"),
        ("unknown", {"pci_id": "1002:67ff"}, "polaris"),
        ("unknown", {"pci_id": "1002:7300"}, "fiji"),
        # not legacy
        ("AMD Radeon RX 5700 XT (radeonsi, navi10, LLVM 15.0.6)", {"vendor": "AMD"}, None),
        ("AMD Radeon RX 5500 XT (navi14, LLVM 15)", {"vendor": "AMD"}, None),
        ("gfx1030", {"vendor": AMD}, None),
        ("AMD Radeon RX 6800", {"pci_id": "1002:73bf"}, None),
        ("NVIDIA GeForce GTX 1080", {"vendor": "NVIDIA Corporation", "pci_id": "10de:1b80"}, None),
        ("Intel(R) UHD Graphics 630", {"vendor": "Intel(R) Corporation"}, None),
        # PoCL on an AMD CPU is a CPU, whatever the name says
        ("pthread-AMD Ryzen 5 2600 Six-Core Processor", {"vendor": "AuthenticAMD", "device_type": "cpu"}, None),
        ("cpu-haswell-Ellesmere", {"vendor": AMD, "device_type": "cpu"}, None),
    ],
)
def test_identify_legacy_family(name: str, kwargs: dict, family: str | None) -> None:
    assert identify_legacy_family(name, **kwargs) == family


def test_pci_id_read_from_sysfs(tmp_path) -> None:
    node = tmp_path / "0000:03:00.0"
    node.mkdir()
    (node / "vendor").write_text("0x1002\n")
    (node / "device").write_text("0x67df\n")
    assert devmod._pci_id_from_sysfs("0000:03:00.0", tmp_path) == "1002:67df"
    assert devmod._pci_id_from_sysfs("0000:04:00.0", tmp_path) is None
    assert devmod._pci_id_from_sysfs(None, tmp_path) is None


def test_pci_address_from_either_extension() -> None:
    from types import SimpleNamespace

    khr = SimpleNamespace(
        extensions="cl_khr_fp16 cl_khr_pci_bus_info",
        pci_bus_info_khr=SimpleNamespace(pci_domain=0, pci_bus=0x23, pci_device=0, pci_function=1),
    )
    amd = SimpleNamespace(
        extensions="cl_amd_device_attribute_query", topology_amd=SimpleNamespace(bus=3, device=0, function=0)
    )
    assert devmod.pci_address(khr) == "0000:23:00.1"
    assert devmod.pci_address(amd) == "0000:03:00.0"
    assert devmod.pci_address(SimpleNamespace(extensions="cl_khr_fp64")) is None


@pytest.fixture(scope="module")
def devices():
    found = discover()
    if not found:
        pytest.skip("no OpenCL platform here (install pocl-opencl-icd)")
    return found


def test_discover_lists_pocl_as_cpu(devices) -> None:
    assert [d.index for d in devices] == list(range(len(devices)))
    assert discover() == devices  # stable order and content
    pocl = [d for d in devices if "Portable Computing Language" in d.platform]
    assert pocl, "PoCL is installed on the test machines"
    for d in pocl:
        assert d.device_type == "cpu"
        assert not d.is_legacy_amd and d.legacy_family is None
        assert d.compute_units >= 1 and d.global_mem_bytes > 0 and d.max_alloc_bytes > 0
        assert d.opencl_version.startswith("OpenCL") and d.driver_version


def test_open_device_by_index_and_env(devices, monkeypatch) -> None:
    dctx = open_device(devices[-1].index)
    assert dctx.info == devices[-1]
    assert dctx.device.name.strip() == devices[-1].name
    monkeypatch.setenv("LEGACYGPU_OPENCL_DEVICE", "0")
    assert open_device().info == devices[0]
    with pytest.raises(DeviceNotFoundError, match="no OpenCL device with index"):
        open_device(len(devices))
    monkeypatch.setenv("LEGACYGPU_OPENCL_DEVICE", "first")
    with pytest.raises(DeviceNotFoundError, match="not an index"):
        open_device()


def test_devices_cli_json_and_table(devices) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["devices", "--output", "json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    assert [d["name"] for d in listed] == [d.name for d in devices]
    assert {"index", "platform", "device_type", "compute_units", "fp16", "legacy_family", "is_legacy_amd"} <= set(
        listed[0]
    )
    res = runner.invoke(cli, ["devices"])
    assert res.exit_code == 0, res.output
    assert devices[0].name in res.output and "cpu" in res.output


# --- device choice under LEGACYGPU_VISIBLE_DEVICES (the node agent's Allocate) ---------------
# Fake pyopencl devices and a fake pyopencl module: no GPU here, and PoCL reports no PCI address.


class _FakeCL:
    """Just enough of pyopencl for open_device: Context, CommandQueue, Error."""

    class Error(Exception):
        pass

    class command_queue_properties:
        PROFILING_ENABLE = 2

    @staticmethod
    def Context(devices):
        return ("ctx", tuple(devices))

    @staticmethod
    def CommandQueue(ctx, dev, properties=0):
        return ("queue", dev)


def _fake_device(name: str, address: str | None, device_type: str = "gpu", compute_units: int = 36):
    from types import SimpleNamespace

    if address is None:
        dev = SimpleNamespace(name=name, extensions="cl_khr_fp64")
    else:
        domain, bus, rest = address.split(":")
        slot, func = rest.split(".")
        info = SimpleNamespace(pci_domain=int(domain, 16), pci_bus=int(bus, 16), pci_device=int(slot, 16),
                               pci_function=int(func, 16))  # fmt: skip
        dev = SimpleNamespace(name=name, extensions="cl_khr_pci_bus_info", pci_bus_info_khr=info)
    info = devmod.DeviceInfo(
        index=0, platform="fake", name=name, vendor="AMD", device_type=device_type, compute_units=compute_units,
        global_mem_bytes=1, max_alloc_bytes=1, local_mem_bytes=1, max_clock_mhz=1, opencl_version="OpenCL 1.2",
        driver_version="1", fp16=False, legacy_family=None, pci_id=None, is_legacy_amd=False,
    )  # fmt: skip
    return info, dev


@pytest.fixture
def fake_node(monkeypatch):
    """A host with a CPU device (no PCI address) and three GPUs at 03:00.0, 06:00.0 and 09:00.0."""
    import dataclasses
    import sys

    pairs = [
        _fake_device("cpu", None, device_type="cpu", compute_units=64),
        _fake_device("gpu-a", "0000:03:00.0", compute_units=36),
        _fake_device("gpu-b", "0000:06:00.0", compute_units=32),
        _fake_device("gpu-c", "0000:09:00.0", compute_units=40),
    ]
    found = [(dataclasses.replace(info, index=i), dev) for i, (info, dev) in enumerate(pairs)]
    monkeypatch.setattr(devmod, "_walk", lambda: found)
    monkeypatch.setitem(sys.modules, "pyopencl", _FakeCL)
    for var in ("LEGACYGPU_OPENCL_DEVICE", "LEGACYGPU_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return found


def test_no_visible_devices_keeps_the_ranked_choice(fake_node) -> None:
    # the biggest GPU wins without the variable: the visible-device rule must not change this
    assert open_device().info.name == "gpu-c"


def test_visible_devices_pick_the_first_allocated_card(fake_node, monkeypatch) -> None:
    monkeypatch.setenv("LEGACYGPU_VISIBLE_DEVICES", "0000:06:00.0,0000:03:00.0")
    dctx = open_device()
    assert dctx.info.name == "gpu-a"  # first in discovery order among the two allocated cards
    assert dctx.device is fake_node[1][1]
    monkeypatch.setenv("LEGACYGPU_VISIBLE_DEVICES", "0000:06:00.0")
    assert open_device().info.name == "gpu-b"  # not the biggest GPU, which this pod was not given
    monkeypatch.setenv("LEGACYGPU_VISIBLE_DEVICES", " 0000:06:00.0 , ")  # whitespace and empty items
    assert open_device().info.name == "gpu-b"


def test_opencl_device_index_overrides_visible_devices(fake_node, monkeypatch, caplog) -> None:
    monkeypatch.setenv("LEGACYGPU_VISIBLE_DEVICES", "0000:06:00.0")
    monkeypatch.setenv("LEGACYGPU_OPENCL_DEVICE", "3")
    with caplog.at_level("WARNING", logger=devmod.__name__):
        assert open_device().info.name == "gpu-c"
    assert "not among those LEGACYGPU_VISIBLE_DEVICES names" in caplog.text
    assert open_device(1).info.name == "gpu-a"  # an explicit index too


def test_visible_devices_naming_none_of_the_cards_here_is_refused(fake_node, monkeypatch) -> None:
    # the cards here report addresses, none of them ours: they belong to other pods
    monkeypatch.setenv("LEGACYGPU_VISIBLE_DEVICES", "0000:42:00.0")
    with pytest.raises(DeviceNotFoundError, match=r"0000:42:00.0 names none .* 0000:03:00.0, 0000:06:00.0"):
        open_device()


def test_visible_devices_without_any_pci_address_warn_and_fall_back(fake_node, monkeypatch, caplog) -> None:
    # PoCL (and the e2e simulator) report no PCI address at all: behave as before, and say so
    addressless = [(info, dev) for info, dev in fake_node if info.device_type == "cpu"]
    monkeypatch.setattr(devmod, "_walk", lambda: addressless)
    monkeypatch.setenv("LEGACYGPU_VISIBLE_DEVICES", "0000:42:00.0")
    with caplog.at_level("WARNING", logger=devmod.__name__):
        assert open_device().info.name == "cpu"
    assert "no OpenCL device here reports a PCI address" in caplog.text
