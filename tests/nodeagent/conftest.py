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

from legacygpu.worker.nodeagent import AgentConfig, NodeAgent

from .fake_kubelet import FakeKubelet
from .sysfs_tree import NodeTree


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
