"""Fixtures for the dashboard tests: one real cluster per module and the system Chromium.

The cluster is a real facade process plus one real worker process on a free
loopback port (``helpers.LocalCluster``, shared with the integration tier),
with its own data dir holding the demo model. It is module-scoped: starting
processes is the slow part, and every test reads counts relative to what it
finds, so tests do not depend on each other's tasks.

Chromium is Debian's ``/usr/bin/chromium`` driven by pytest-playwright
(``playwright install`` is never run); these overrides of pytest-playwright's
fixtures apply to this folder only. Without it the tier is skipped on a
developer machine but fails when the ``CI`` environment variable is set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TOKEN, LocalCluster, cluster_with_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
WORKER_NAME = "ui-worker-1"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: `make setup` installs the chromium package"
        if os.environ.get("CI"):  # in CI the dashboard tier must run, never quietly skip
            pytest.fail(message)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 1000}}


@pytest.fixture(scope="module")
def ui_cluster(tmp_path_factory: pytest.TempPathFactory, demo_repository: Path) -> Iterator[LocalCluster]:
    """A running facade with one active worker named :data:`WORKER_NAME`."""
    with cluster_with_worker(tmp_path_factory.mktemp("ui-cluster") / "data", demo_repository, WORKER_NAME) as cluster:
        yield cluster


@pytest.fixture
def worker_name() -> str:
    """The name of ``ui_cluster``'s worker."""
    return WORKER_NAME


@pytest.fixture
def dashboard_url(ui_cluster: LocalCluster) -> str:
    """The dashboard URL with the right token in its fragment, as `cluster start` prints it."""
    return f"{ui_cluster.url}/ui#token={TOKEN}"
