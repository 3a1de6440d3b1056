"""``legacygpu node-agent`` as a real process: registers with a fake kubelet, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from legacygpu.cli.nodeagent import command
from legacygpu.testing.fake_kubelet import FakeKubelet
from legacygpu.testing.sysfs_tree import NodeTree, rx580
from legacygpu.worker.nodeagent.v1beta1 import api_pb2

LEGACYGPU = str(Path(sys.executable).parent / "legacygpu")


def agent_args(node: NodeTree, *extra: str) -> list[str]:
    return ["--sysfs-root", str(node.sysfs), "--dev-root", str(node.dev), "--kubelet-dir", str(node.kubelet_dir),
            *extra]


async def test_agent_process_serves_the_kubelet_and_exits_0_on_sigterm(
    node: NodeTree, kubelet: FakeKubelet
) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    process = await asyncio.create_subprocess_exec(
        LEGACYGPU, "node-agent", *agent_args(node, "--health-checks", "sysfs", "--health-interval", "0.2",
                                             "--resource-name", "example.com/rx580"),
        stderr=subprocess.PIPE,
    )
    try:
        await kubelet.wait_for(lambda: kubelet.lists, timeout=60)
        assert kubelet.registrations[0].resource_name == "example.com/rx580"
        socket = node.kubelet_dir / "example.com_rx580.sock"
        assert socket.exists()
        assert {d.id: d.health for d in kubelet.latest} == {"0000:01:00.0": "Healthy", "0000:02:00.0": "Healthy"}
        response = await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=["0000:02:00.0"])]), timeout=5)
        assert response.container_responses[0].envs["LEGACYGPU_VISIBLE_DEVICES"] == "0000:02:00.0"

        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
        stderr = (await process.stderr.read()).decode()
        assert code == 0, stderr
        assert not socket.exists()
        assert "node agent stopped" in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_print_labels_runs_the_opencl_probe_on_pocl(node: NodeTree) -> None:
    node.plug(rx580(0))
    result = subprocess.run([LEGACYGPU, "node-agent", *agent_args(node, "--opencl-device-type", "cpu",
                                                                  "--print-labels")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    labels = json.loads(result.stdout)
    assert labels["legacygpu.io/gpu.count"] == "1"
    assert labels["legacygpu.io/gpu.model"] == "rx580"
    assert labels["legacygpu.io/gpu.opencl-version"]  # PoCL answered
    assert "card 0000:01:00.0 is Healthy" in result.stderr


def test_bad_options_are_usage_errors(node: NodeTree) -> None:
    runner = CliRunner()
    bad_check = runner.invoke(command, agent_args(node, "--health-checks", "sysfs,gpu-burn"))
    assert bad_check.exit_code == 2 and "unknown check(s) gpu-burn" in bad_check.output
    bad_name = runner.invoke(command, agent_args(node, "--resource-name", "gpu"))
    assert bad_name.exit_code == 2 and "not an extended resource name" in bad_name.output
    bad_replicas = runner.invoke(command, agent_args(node, "--replicas-per-gpu", "0"))
    assert bad_replicas.exit_code == 2
    long_dir = node.root / ("d" * 100)
    long_dir.mkdir()
    too_long = runner.invoke(command, agent_args(node, "--health-checks", "sysfs", "--kubelet-dir", str(long_dir)))
    assert too_long.exit_code == 1 and "use a shorter --kubelet-dir" in too_long.output
