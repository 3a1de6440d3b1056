"""Fixtures for the node agent: a fixture node tree, a fake kubelet, a running agent."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from legacygpu.testing.fake_kubelet import FakeKubelet
from legacygpu.testing.sysfs_tree import NodeTree
from legacygpu.worker.nodeagent import AgentConfig, NodeAgent


@pytest.fixture
def node() -> Iterator[NodeTree]:
    # Unix socket paths are limited to 107 bytes: keep the root short, not under pytest's tmp_path.
    root = Path(tempfile.mkdtemp(prefix="na-", dir="/tmp"))
    try:
        yield NodeTree(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def kubelet(node: NodeTree) -> AsyncIterator[FakeKubelet]:
    fake = FakeKubelet(node.kubelet_dir)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def agent_config(node: NodeTree, **overrides: object) -> AgentConfig:
    """Fast settings for tests: short intervals, sysfs checks only unless told otherwise."""
    config = AgentConfig(
        sysfs_root=node.sysfs,
        dev_root=node.dev,
        kubelet_dir=node.kubelet_dir,
        health_interval=0.1,
        health_checks=("sysfs",),
        watch_interval=0.1,
        grace=0.5,
        register_timeout=5.0,
        max_register_backoff=0.5,
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(agent: NodeAgent) -> AsyncIterator[NodeAgent]:
    """Run ``agent`` in a task; on exit set its stop event and wait for a clean return."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture(autouse=True)
def pocl_is_the_only_cpu_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's OpenCL join sees PoCL's CPU device alone.

    The node-agent tests stand PoCL's CPU device in for card A's driver and leave card B
    without one. The session also enables Mesa rusticl's llvmpipe CPU device for the
    OpenCL tiers (tests/conftest.py), which the join would otherwise hand to card B.
    """
    from legacygpu.worker.nodeagent import openclprobe

    listed = openclprobe.PyOpenCLProbe.list_devices

    def pocl_only(self: openclprobe.PyOpenCLProbe) -> tuple[list[openclprobe.OpenCLDevice], list[str]]:
        devices, errors = listed(self)
        return [d for d in devices if "rusticl" not in d.platform.lower()], errors

    monkeypatch.setattr(openclprobe.PyOpenCLProbe, "list_devices", pocl_only)
