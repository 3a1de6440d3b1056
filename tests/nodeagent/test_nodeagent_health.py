"""Health rounds: sysfs and device-node checks, and the OpenCL probe for real on PoCL.

PoCL's CPU device stands in for a card's OpenCL device (``device_types=("cpu",)``):
it reports no PCI address, so it is joined to the first card by order, as
Mesa's drivers are, and the probe kernel really runs on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from legacygpu.testing.sysfs_tree import NodeTree, rx580
from legacygpu.worker.nodeagent.health import HealthChecker
from legacygpu.worker.nodeagent.openclprobe import OpenCLDevice, PyOpenCLProbe, join_cards, opencl_version
from legacygpu.worker.nodeagent.sysfs import CardInfo

A, B = "0000:01:00.0", "0000:02:00.0"
LEGACYGPU = str(Path(sys.executable).parent / "legacygpu")


@pytest.fixture(scope="module")
def pocl() -> PyOpenCLProbe:
    probe = PyOpenCLProbe(("cpu",))
    devices, errors = probe.list_devices()
    assert devices, f"PoCL should expose the CPU as an OpenCL device here: {errors}"
    return probe


def test_sysfs_only_round_reports_every_card_healthy(node: NodeTree) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    statuses = HealthChecker(node.sysfs, node.dev, checks=("sysfs",)).check_round()
    assert {a: (s.healthy, s.reasons) for a, s in statuses.items()} == {A: (True, ()), B: (True, ())}


def test_opencl_probe_runs_on_the_joined_device_and_a_card_without_one_is_unhealthy(
    node: NodeTree, pocl: PyOpenCLProbe
) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    checker = HealthChecker(node.sysfs, node.dev, checks=("sysfs", "opencl"), probe=pocl)
    statuses = checker.check_round()
    assert statuses[A].healthy, statuses[A].reasons
    assert statuses[A].opencl is not None and statuses[A].opencl.compute_units >= 1
    assert not statuses[B].healthy
    assert statuses[B].reasons[0].startswith(f"no OpenCL device for card {B}")

    # The card with the OpenCL device vanishes: it turns Unhealthy, and its
    # device is not handed to the other card.
    card = node.unplug(A)
    statuses = checker.check_round()
    assert not statuses[A].healthy and "no longer listed" in statuses[A].reason
    assert not statuses[B].healthy and statuses[B].opencl is None
    node.plug(card)
    statuses = checker.check_round()
    assert statuses[A].healthy, statuses[A].reasons


class HangingProbe:
    """A driver that hangs in the probe kernel: a real GPU hang cannot be produced here."""

    def __init__(self, inner: PyOpenCLProbe) -> None:
        self.inner = inner
        self.release = threading.Event()

    def list_devices(self) -> tuple[list[OpenCLDevice], list[str]]:
        return self.inner.list_devices()

    def check(self, device: OpenCLDevice) -> None:
        self.release.wait(30)


def test_a_hung_probe_marks_the_card_unhealthy_until_it_returns(node: NodeTree, pocl: PyOpenCLProbe) -> None:
    node.plug(rx580(0))
    probe = HangingProbe(pocl)
    checker = HealthChecker(node.sysfs, node.dev, checks=("opencl",), probe=probe, opencl_timeout=0.2)
    first = checker.check_round()[A]
    assert not first.healthy and "blocked: no answer within 0.2s" in first.reason
    second = checker.check_round()[A]  # no second probe is piled onto a hung one
    assert not second.healthy and "has not returned" in second.reason
    probe.release.set()
    checker._pending[f"opencl-{A}"].join(5)
    probe.release.clear()
    probe.check = lambda device: None  # type: ignore[method-assign]  # the driver recovered
    assert checker.check_round()[A].healthy


def test_join_prefers_reported_pci_addresses_then_pairs_the_rest_in_order() -> None:
    cards = [CardInfo(pci_address=a, render_node=f"renderD{128 + i}", render_minor=128 + i)
             for i, a in enumerate(("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"))]
    devices = [
        OpenCLDevice("0:0", "Clover", "first", 0x1002, "OpenCL 1.1 Mesa", 36, 1, None),
        OpenCLDevice("1:0", "AMD APP", "reported", 0x1002, "OpenCL 2.0 AMD-APP (3423.0)", 36, 1, "0000:02:00.0"),
        OpenCLDevice("0:1", "Clover", "second", 0x1002, "OpenCL 1.1 Mesa", 36, 1, None),
    ]
    joined = join_cards(cards, devices)
    assert {a: d.name for a, d in joined.items()} == {
        "0000:01:00.0": "first", "0000:02:00.0": "reported", "0000:03:00.0": "second"}
    assert opencl_version("OpenCL 2.0 AMD-APP (3423.0)") == "2.0"
    assert opencl_version("garbage") is None


def test_broken_opencl_install_leaves_cards_listed_but_unhealthy(node: NodeTree, tmp_path) -> None:
    """No ICD at all (OCL_ICD_VENDORS -> empty dir): a real broken OpenCL install, in a subprocess."""
    node.plug(rx580(0))
    env = {**os.environ, "OCL_ICD_VENDORS": str(tmp_path)}
    result = subprocess.run(
        [LEGACYGPU, "node-agent", "--sysfs-root", str(node.sysfs),
         "--dev-root", str(node.dev), "--kubelet-dir", str(node.kubelet_dir),
         "--opencl-device-type", "cpu", "--print-labels"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"card {A} is Unhealthy: no OpenCL device for card {A}: no OpenCL platform" in result.stderr
    assert '"legacygpu.io/gpu.count": "1"' in result.stdout
    assert "opencl-version" not in result.stdout
