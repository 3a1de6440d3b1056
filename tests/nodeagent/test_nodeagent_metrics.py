"""The node agent's /metrics: per-GPU gauges in base units, following sysfs and the plugin's health."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from dataclasses import replace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from legacygpu.testing.fake_kubelet import FakeKubelet
from legacygpu.testing.sysfs_tree import GIB, NodeTree, rx580
from legacygpu.worker.nodeagent import NodeAgent

from .conftest import agent_config, running

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def gpu(address: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"gpu": address, **extra}.items()))


async def until(port: int, check: object, what: str, timeout: float = 10.0) -> Samples:
    deadline = asyncio.get_running_loop().time() + timeout
    samples: Samples = {}
    while asyncio.get_running_loop().time() < deadline:
        samples = await scrape(port)
        if check(samples):  # type: ignore[operator]
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last scrape: {samples}")


async def test_gauges_report_each_card_in_base_units(node: NodeTree, kubelet: FakeKubelet) -> None:
    a = node.plug(replace(rx580(0), busy_percent=37, vram_used_bytes=3 * GIB, power_microwatts=121_500_000,
                          temperature_millideg=67_250, shader_clock_hz=1_340_000_000, memory_clock_hz=2_000_000_000))
    b = node.plug(replace(rx580(1), vram_bytes=4 * GIB, shader_clock_hz=None, memory_clock_hz=None))
    agent = NodeAgent(agent_config(node, metrics_port=0, metrics_host="127.0.0.1"))
    async with running(agent):
        await kubelet.wait_for(lambda: kubelet.lists, timeout=10)
        assert agent.metrics.port
        s = await until(agent.metrics.port, lambda s: s.get(("legacygpu_nodeagent_registrations_total", ())) == 1,
                        "the registration counted")
        A, B = a.pci_address, b.pci_address
        assert s[("legacygpu_gpu_busy_ratio", gpu(A))] == 0.37
        assert s[("legacygpu_gpu_vram_used_bytes", gpu(A))] == 3 * GIB
        assert s[("legacygpu_gpu_vram_total_bytes", gpu(A))] == 8 * GIB
        assert s[("legacygpu_gpu_vram_total_bytes", gpu(B))] == 4 * GIB
        assert s[("legacygpu_gpu_temperature_celsius", gpu(A))] == 67.25
        assert s[("legacygpu_gpu_power_watts", gpu(A))] == 121.5
        assert s[("legacygpu_gpu_clock_hertz", gpu(A, clock="shader"))] == 1.34e9
        assert s[("legacygpu_gpu_clock_hertz", gpu(A, clock="memory"))] == 2e9
        # A board without clock sensors exports no clock series and is not unhealthy for it.
        assert not [k for k in s if k[0] == "legacygpu_gpu_clock_hertz" and ("gpu", B) in k[1]]
        assert s[("legacygpu_gpu_healthy", gpu(B))] == 1
        info = [dict(k[1]) for k in s if k[0] == "legacygpu_gpu_info"]
        assert {"gpu": A, "render_node": "renderD128", "family": "polaris", "model": "rx580", "gfx": "gfx803"} in info

        # Readings follow sysfs from one health round to the next.
        node.attribute(A, "gpu_busy_percent").write_text("92\n")
        node.sensor(A, "temp1_input").write_text("88000\n")
        # Both files are read in the same round only if it starts after both writes: wait for both.
        s = await until(
            agent.metrics.port,
            lambda s: s.get(("legacygpu_gpu_busy_ratio", gpu(A))) == 0.92
            and s.get(("legacygpu_gpu_temperature_celsius", gpu(A))) == 88.0,
            "the new load and temperature",
        )
        assert s[("legacygpu_gpu_temperature_celsius", gpu(A))] == 88.0


async def test_health_is_the_plugins_view_and_a_vanished_card_keeps_no_readings(
    node: NodeTree, kubelet: FakeKubelet
) -> None:
    a, b = node.plug(rx580(0)), node.plug(rx580(1))
    agent = NodeAgent(agent_config(node, metrics_port=0, metrics_host="127.0.0.1"))
    async with running(agent):
        await kubelet.wait_for(lambda: kubelet.lists, timeout=10)
        assert agent.metrics.port
        A, B = a.pci_address, b.pci_address
        await until(agent.metrics.port, lambda s: s.get(("legacygpu_gpu_healthy", gpu(A))) == 1, "A healthy")

        node.break_file(A, "mem_info_vram_total")
        s = await until(agent.metrics.port, lambda s: s.get(("legacygpu_gpu_healthy", gpu(A))) == 0,
                        "A unhealthy")
        await kubelet.wait_for(lambda: {d.id: d.health for d in kubelet.latest}.get(A) == "Unhealthy", timeout=10)
        assert ("legacygpu_gpu_vram_total_bytes", gpu(A)) not in s  # unreadable: no made-up value
        assert s[("legacygpu_gpu_present", gpu(A))] == 1

        node.unplug(B)
        s = await until(agent.metrics.port, lambda s: s.get(("legacygpu_gpu_present", gpu(B))) == 0, "B gone")
        assert s[("legacygpu_gpu_healthy", gpu(B))] == 0
        assert not [k for k in s if ("gpu", B) in k[1] and k[0] not in (
            "legacygpu_gpu_present", "legacygpu_gpu_healthy", "legacygpu_gpu_info")]


async def test_no_metrics_server_unless_asked(node: NodeTree) -> None:
    node.plug(rx580(0))
    agent = NodeAgent(agent_config(node))
    async with running(agent):
        await asyncio.sleep(0.2)
        assert agent.metrics.port is None


async def test_a_busy_metrics_port_does_not_stop_the_device_plugin(
    node: NodeTree, kubelet: FakeKubelet, caplog: pytest.LogCaptureFixture
) -> None:
    node.plug(rx580(0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = NodeAgent(agent_config(node, metrics_port=port, metrics_host="127.0.0.1"))
        async with running(agent):
            await kubelet.wait_for(lambda: kubelet.lists, timeout=10)
            assert {d.id: d.health for d in kubelet.latest} == {"0000:01:00.0": "Healthy"}
            assert agent.metrics.port is None
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in caplog.text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (apt prometheus) is not installed")
async def test_promtool_finds_nothing_to_lint_in_the_exposition(node: NodeTree) -> None:
    node.plug(replace(rx580(0), busy_percent=10))
    agent = NodeAgent(agent_config(node, metrics_port=0, metrics_host="127.0.0.1"))
    async with running(agent):
        for _ in range(100):
            if agent.metrics.port:
                break
            await asyncio.sleep(0.05)
        assert agent.metrics.port
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{agent.metrics.port}/metrics", timeout=5)).text
    assert "legacygpu_gpu_busy_ratio" in text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
