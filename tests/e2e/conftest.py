"""Fixtures for the end-to-end tests on a real Kubernetes control plane.

Every test in this folder is marked ``e2e``. The session fixture ``kube`` starts the
local control plane (etcd + kube-apiserver/-controller-manager/-scheduler built from
the Go module proxy, plus the node simulator with three 2-GPU nodes) unless one is
already running (``make e2e-cluster``), and stops it at the end if it started it
(``E2E_KEEP_CLUSTER=1`` keeps it). With ``E2E_KUBECONFIG`` set nothing is started: the
tests run against that cluster, and those that need the simulator skip.

The Kubernetes binaries are built (once per machine, minutes) right after collection,
outside any test's timeout; without Go and without cached binaries the e2e tests skip.

Fixtures for later tests (operator, CRDs): ``kube`` (an :class:`e2ecluster.Kube`:
kubeconfig path, ``api``/``core``/``custom``/``dynamic`` clients, ``apply``,
``wait_condition``, ``wait_for``, ``token``, ``kubeconfig_for_token``...),
``namespace`` (a fresh namespace per test), ``simulated_kube`` (skips on a BYO cluster)
and ``worker_command`` (set the simulator's worker command template for one test).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "e2e") not in sys.path:
    sys.path.insert(0, str(REPO / "e2e"))

from e2ecluster import Cluster, ClusterError, Kube  # noqa: E402
from e2ecluster.cluster import DEFAULT_WORKER_COMMAND  # noqa: E402

_HERE = Path(__file__).resolve().parent
_BUILD_ERROR: str | None = None


def _byo() -> Path | None:
    value = os.environ.get("E2E_KUBECONFIG")
    return Path(value).expanduser() if value else None


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the kube-* binaries before the first e2e test, outside per-test timeouts."""
    global _BUILD_ERROR
    wanted = any(_HERE in Path(str(item.path)).resolve().parents for item in session.items)
    if not wanted or _byo() is not None or session.config.option.collectonly:
        return
    if shutil.which("go") is None and not Cluster().kube_bin_cached():
        _BUILD_ERROR = "no Go toolchain and no cached Kubernetes binaries (see docs/e2e-control-plane.md)"
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not Cluster().kube_bin_cached():
        reporter.write_line("e2e: building kube-apiserver/-controller-manager/-scheduler (first run: minutes)")
    try:
        Cluster().kube_bin()
    except ClusterError as exc:
        _BUILD_ERROR = f"building the Kubernetes binaries failed: {exc}"


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """The API connection: the local control plane, or the cluster in ``E2E_KUBECONFIG``."""
    byo = _byo()
    if byo is not None:
        conn = Kube(byo)
        yield conn
        conn.close()
        return
    if _BUILD_ERROR is not None:
        pytest.skip(_BUILD_ERROR)
    cluster = Cluster()
    started_here = not cluster.is_running()
    state = cluster.up()
    conn = Kube(state.kubeconfig, cluster)
    try:
        yield conn
    finally:
        conn.close()
        cluster.set_worker_command(DEFAULT_WORKER_COMMAND)
        if started_here and not os.environ.get("E2E_KEEP_CLUSTER"):
            cluster.down()


@pytest.fixture
def simulated_kube(kube: Kube) -> Kube:
    """``kube``, but only on the local cluster whose nodes and pods the simulator plays."""
    if not kube.simulated:
        pytest.skip("needs the local simulated cluster (E2E_KUBECONFIG is set)")
    return kube


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    with kube.namespace("e2e") as name:
        yield name


@pytest.fixture
def worker_command(simulated_kube: Kube) -> Iterator[Callable[[str], None]]:
    """Set the simulator's worker command template for this test; restored afterwards."""
    yield simulated_kube.set_worker_command
    simulated_kube.set_worker_command(DEFAULT_WORKER_COMMAND)
