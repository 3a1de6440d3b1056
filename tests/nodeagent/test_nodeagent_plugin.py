"""The device plugin against a fake kubelet, over real gRPC on real unix sockets.

The agent runs in-process on a fixture sysfs/dev tree (sysfs checks only; the
OpenCL check is covered in test_nodeagent_health.py), the fake kubelet
(legacygpu.testing.fake_kubelet) serves Registration and drives the plugin the way the
kubelet does.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from legacygpu.testing.fake_kubelet import FakeKubelet
from legacygpu.testing.sysfs_tree import NodeTree, rx580
from legacygpu.worker.nodeagent import NodeAgent
from legacygpu.worker.nodeagent.v1beta1 import api_pb2

from .conftest import agent_config, running

A, B = "0000:01:00.0", "0000:02:00.0"


def ids(devices: list) -> dict[str, str]:
    return {d.id: d.health for d in devices}


async def test_two_rx580s_register_list_and_allocate(node: NodeTree, kubelet: FakeKubelet) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1, numa_node=1))
    async with running(NodeAgent(agent_config(node))):
        await kubelet.wait_for(lambda: kubelet.lists)
        request = kubelet.registrations[0]
        assert request.version == "v1beta1"
        assert request.resource_name == "legacygpu.io/gpu"
        assert request.endpoint == "legacygpu.io_gpu.sock"
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert kubelet.options[0].get_preferred_allocation_available

        devices = kubelet.latest
        assert ids(devices) == {A: "Healthy", B: "Healthy"}
        assert {d.id: d.numa for d in devices} == {A: (), B: (1,)}  # numa_node -1: no topology

        response = await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[B, A]),
        ]), timeout=5)
        (container,) = response.container_responses
        specs = {(d.container_path, d.host_path, d.permissions) for d in container.devices}
        assert specs == {
            ("/dev/dri/renderD129", str(node.dev / "dri/renderD129"), "rw"),
            ("/dev/dri/renderD128", str(node.dev / "dri/renderD128"), "rw"),
            ("/dev/kfd", str(node.dev / "kfd"), "rw"),
        }
        assert container.envs["LEGACYGPU_VISIBLE_DEVICES"] == f"{B},{A}"
        assert container.envs["LEGACYGPU_RENDER_NODES"] == "/dev/dri/renderD129,/dev/dri/renderD128"
        assert container.envs["LEGACYGPU_DEVICE_IDS"] == f"{B},{A}"


async def test_allocate_without_kfd_lists_only_render_nodes(node: NodeTree, kubelet: FakeKubelet) -> None:
    node.plug(rx580(0), kfd=False)
    async with running(NodeAgent(agent_config(node))):
        await kubelet.wait_for(lambda: kubelet.lists)
        response = await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[A])]), timeout=5)
        assert [d.container_path for d in response.container_responses[0].devices] == ["/dev/dri/renderD128"]


async def test_allocate_unknown_or_unhealthy_id_is_refused_by_name(node: NodeTree, kubelet: FakeKubelet) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    async with running(NodeAgent(agent_config(node))):
        await kubelet.wait_for(lambda: kubelet.lists)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=[A, "0000:09:00.0"])]), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "0000:09:00.0" in unknown.value.details()

        seen = len(kubelet.lists)
        path = node.break_file(B, "mem_info_vram_total", "unreadable")
        await kubelet.wait_for_list(lambda d: ids(d).get(B) == "Unhealthy", since=seen)
        with pytest.raises(grpc.aio.AioRpcError) as unhealthy:
            await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=[B])]), timeout=5)
        assert unhealthy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert B in unhealthy.value.details()
        assert str(path) in unhealthy.value.details()  # the reason names the file


async def test_card_disappears_then_comes_back(node: NodeTree, kubelet: FakeKubelet) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    agent = NodeAgent(agent_config(node))
    async with running(agent):
        await kubelet.wait_for_list(lambda d: ids(d) == {A: "Healthy", B: "Healthy"})
        seen = len(kubelet.lists)
        card = node.unplug(B)
        gone = await kubelet.wait_for_list(lambda d: ids(d).get(B) == "Unhealthy", since=seen)
        assert ids(gone) == {A: "Healthy", B: "Unhealthy"}  # still listed, out of service
        assert "no longer listed" in agent.inventory.get(B).reason

        seen = len(kubelet.lists)
        node.plug(card)
        back = await kubelet.wait_for_list(lambda d: ids(d).get(B) == "Healthy", since=seen)
        assert ids(back) == {A: "Healthy", B: "Healthy"}
        assert len(kubelet.registrations) == 1  # health changes never re-register


async def test_missing_sysfs_file_and_device_node_make_a_card_unhealthy(
    node: NodeTree, kubelet: FakeKubelet
) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    agent = NodeAgent(agent_config(node))
    async with running(agent):
        await kubelet.wait_for_list(lambda d: ids(d) == {A: "Healthy", B: "Healthy"})
        seen = len(kubelet.lists)
        node.break_file(A, "hwmon/hwmon0/temp1_input", "missing")
        (node.dev / "dri/renderD129").unlink()
        await kubelet.wait_for_list(lambda d: ids(d) == {A: "Unhealthy", B: "Unhealthy"}, since=seen)
        assert "temp1_input is missing" in agent.inventory.get(A).reason
        assert "renderD129 is missing" in agent.inventory.get(B).reason

        seen = len(kubelet.lists)
        node.restore_file(A, "hwmon/hwmon0/temp1_input", "52000\n")
        (node.dev / "dri/renderD129").write_text("")
        await kubelet.wait_for_list(lambda d: ids(d) == {A: "Healthy", B: "Healthy"}, since=seen)


async def test_kubelet_restart_leads_to_a_new_register(node: NodeTree, kubelet: FakeKubelet) -> None:
    node.plug(rx580(0))
    agent = NodeAgent(agent_config(node))
    async with running(agent):
        await kubelet.wait_for(lambda: kubelet.lists)
        socket = node.kubelet_dir / "legacygpu.io_gpu.sock"
        assert socket.exists()
        seen = len(kubelet.lists)
        await kubelet.restart()  # wipes our socket and recreates kubelet.sock, like the kubelet
        await kubelet.wait_for(lambda: len(kubelet.registrations) == 2)
        await kubelet.wait_for(lambda: len(kubelet.lists) > seen)
        assert ids(kubelet.latest) == {A: "Healthy"}
        assert socket.exists()
        assert agent.registrations == 2
        response = await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[A])]), timeout=5)
        assert response.container_responses[0].envs["LEGACYGPU_VISIBLE_DEVICES"] == A


async def test_kubelet_restart_that_keeps_our_socket_is_still_noticed(node: NodeTree, kubelet: FakeKubelet) -> None:
    node.plug(rx580(0))
    agent = NodeAgent(agent_config(node))
    async with running(agent):
        await kubelet.wait_for(lambda: kubelet.lists)
        await kubelet.restart(wipe=False)  # only kubelet.sock is recreated (it may reuse the inode number)
        await kubelet.wait_for(lambda: len(kubelet.registrations) == 2)
        assert agent.registrations == 2


async def test_registration_refused_is_retried(node: NodeTree) -> None:
    node.plug(rx580(0))
    kubelet = FakeKubelet(node.kubelet_dir, refuse=2)
    await kubelet.start()
    try:
        async with running(NodeAgent(agent_config(node))):
            await kubelet.wait_for(lambda: kubelet.lists)
            assert kubelet.refused == 2 and len(kubelet.registrations) == 1
    finally:
        await kubelet.stop()


async def test_plugin_waits_for_the_kubelet_and_removes_its_socket_on_stop(node: NodeTree) -> None:
    node.plug(rx580(0))
    kubelet = FakeKubelet(node.kubelet_dir)
    agent = NodeAgent(agent_config(node))
    socket = node.kubelet_dir / "legacygpu.io_gpu.sock"
    try:
        async with running(agent):
            await asyncio.sleep(0.3)
            assert not socket.exists()  # serve only once a kubelet is there to register with
            await kubelet.start()
            await kubelet.wait_for(lambda: kubelet.lists)
            assert socket.exists()
        assert not socket.exists()
        assert kubelet.stream_ends == [grpc.StatusCode.OK]  # the stream was ended, not broken
    finally:
        await kubelet.stop()


async def test_node_without_gpus_registers_an_empty_list(node: NodeTree, kubelet: FakeKubelet) -> None:
    async with running(NodeAgent(agent_config(node))):
        await kubelet.wait_for(lambda: kubelet.lists)
        assert kubelet.latest == []
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await kubelet.stub().Allocate(api_pb2.AllocateRequest(container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=[A])]), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sharing_advertises_replicas_and_allocates_each_card_once(
    node: NodeTree, kubelet: FakeKubelet
) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    async with running(NodeAgent(agent_config(node, replicas_per_gpu=3))):
        await kubelet.wait_for(lambda: kubelet.lists)
        listed = ids(kubelet.latest)
        assert listed == {f"{card}::{n}": "Healthy" for card in (A, B) for n in range(3)}

        stub = kubelet.stub()
        response = await stub.Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[f"{A}::0", f"{A}::2"])]), timeout=5)
        container = response.container_responses[0]
        assert [d.container_path for d in container.devices] == ["/dev/dri/renderD128", "/dev/kfd"]
        assert container.envs["LEGACYGPU_VISIBLE_DEVICES"] == A
        assert container.envs["LEGACYGPU_DEVICE_IDS"] == f"{A}::0,{A}::2"

        preferred = await stub.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=sorted(listed), allocation_size=2),
        ]), timeout=5)
        chosen = list(preferred.container_responses[0].deviceIDs)
        assert len(chosen) == 2
        assert {c.split("::")[0] for c in chosen} == {A, B}  # two replicas go to two different cards


async def test_preferred_allocation_keeps_a_pod_on_one_numa_node(node: NodeTree, kubelet: FakeKubelet) -> None:
    for index, numa in enumerate((0, 0, 1, 1)):
        node.plug(rx580(index, numa_node=numa))
    cards = [f"0000:{bus:02x}:00.0" for bus in range(1, 5)]
    async with running(NodeAgent(agent_config(node))):
        await kubelet.wait_for(lambda: kubelet.lists)
        response = await kubelet.stub().GetPreferredAllocation(api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=cards, must_include_deviceIDs=[cards[3]], allocation_size=2),
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=[cards[0], cards[2], cards[3]], allocation_size=2),
            ]), timeout=5)
        first, second = (list(r.deviceIDs) for r in response.container_responses)
        assert first == [cards[3], cards[2]]  # the other card on NUMA node 1
        assert sorted(second) == [cards[2], cards[3]]  # the node that can hold both


async def test_opencl_check_in_the_agent_marks_a_card_without_a_driver_unhealthy(
    node: NodeTree, kubelet: FakeKubelet
) -> None:
    """PoCL's CPU device stands in for card A's OpenCL device; card B has none, like a broken driver."""
    node.plug(rx580(0))
    node.plug(rx580(1))
    agent = NodeAgent(agent_config(node, health_checks=("sysfs", "opencl"), opencl_device_types=("cpu",),
                                   health_interval=0.5))
    async with running(agent):
        devices = await kubelet.wait_for_list(lambda d: len(d) == 2)
        assert ids(devices) == {A: "Healthy", B: "Unhealthy"}
        assert agent.inventory.get(B).reason.startswith(f"no OpenCL device for card {B}")
        assert agent.labels is not None and agent.labels["legacygpu.io/gpu.count"] == "2"
