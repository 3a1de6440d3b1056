"""The e2e tooling an administrator uses: ``e2ecluster up --worker-command`` and the project's kubectl.

The first test needs no control plane: it checks that a worker command asked for on ``up`` is
installed even when the cluster is already running (it used to be ignored then). The second runs
the kubectl that ``make setup`` puts in ``.cache/bin`` against the real API server.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from e2ecluster import Cluster, Kube
from e2ecluster.cluster import DEFAULT_WORKER_COMMAND, ClusterState

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".cache" / "bin" / "kubectl"


def test_up_installs_the_worker_command_it_is_given_even_on_a_running_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("E2E_WORKER_COMMAND", raising=False)
    root = tmp_path / "cluster"
    root.mkdir()
    Cluster(root).set_worker_command("old {command}")
    running = ClusterState(root=str(root), server="https://127.0.0.1:1")
    monkeypatch.setattr(Cluster, "is_running", lambda self: True)
    monkeypatch.setattr(Cluster, "load_state", lambda self: running)

    assert Cluster(root).up() is running
    assert (root / "worker-command").read_text() == "old {command}\n"  # no flag: the cluster keeps its own
    assert Cluster(root, worker_command="new {command}").up() is running
    assert (root / "worker-command").read_text() == "new {command}\n"
    monkeypatch.setenv("E2E_WORKER_COMMAND", "from-env {command}")
    Cluster(root).up()
    assert (root / "worker-command").read_text() == "from-env {command}\n"
    assert Cluster(tmp_path / "other").worker_command == "from-env {command}"
    monkeypatch.delenv("E2E_WORKER_COMMAND")
    assert Cluster(tmp_path / "other").worker_command == DEFAULT_WORKER_COMMAND


def test_make_setup_installs_a_kubectl_of_the_control_planes_minor_version(kube: Kube) -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "bash scripts/get-kubectl.sh" in makefile.split("$(SETUP_STAMP):", 1)[1].split("\n\n", 1)[0]
    if not KUBECTL.exists():
        pytest.skip(f"{KUBECTL} is not installed (make setup installs it)")
    out = subprocess.run([str(KUBECTL), "--kubeconfig", str(kube.kubeconfig), "version", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    versions = json.loads(out.stdout)
    client, server = versions["clientVersion"], versions["serverVersion"]
    assert (client["major"], client["minor"]) == (server["major"], server["minor"]), versions
    listed = subprocess.run([str(KUBECTL), "--kubeconfig", str(kube.kubeconfig), "get", "nodes", "-o", "name"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert listed.stdout.strip(), "no nodes listed"
