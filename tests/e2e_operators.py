"""Operator replicas and busy workers on the e2e control plane, shared by the operator e2e tests.

The HA, failover and API-server-restart tests all run the same setup: the CRDs and the
operator's RBAC applied, ``legacygpu operator run --leader-elect`` started as local processes
authenticated with the operator ServiceAccount's token (so RBAC is the chart's), and, where
tasks must run, the node simulator's worker pods running ``legacygpu worker start --kubernetes``
on a model slow enough (some tens of milliseconds) that a fault always finds work in flight.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from e2ecluster import Kube

from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.rbac import rbac_manifests

__all__ = [
    "API",
    "BUSY_INPUT",
    "GROUP",
    "PLURAL",
    "VERSION",
    "busy_operators",
    "busy_workers",
    "create_tasks",
    "lease_holder",
    "one_operator",
    "operator_replicas",
    "phases",
    "tasks",
]

API = "legacygpu.io/v1alpha1"
GROUP, VERSION, PLURAL = "legacygpu.io", "v1alpha1", "inferencetasks"
BUSY_WIDTH = 256
BUSY_INPUT = {"name": "x", "datatype": "FP32", "shape": [1, BUSY_WIDTH], "data": [0.01] * BUSY_WIDTH}
"""One input of the ``busy`` model :func:`busy_workers` installs."""


def _replica(
    kubeconfig: Path, namespace: str, identity: str, log: Path, extra: Iterable[str]
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "legacygpu.cli", "operator", "run", "--kubeconfig", str(kubeconfig),
         "--namespace", namespace, "--no-metrics", "--identity", identity, *extra],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )


def _operator_kubeconfig(kube: Kube, namespace: str, folder: Path) -> Path:
    """The CRDs and the operator's RBAC applied; a kubeconfig with the operator ServiceAccount's token."""
    kube.apply(all_crds())
    kube.apply(rbac_manifests(namespace=namespace))
    return kube.kubeconfig_for_token(kube.token(namespace, "legacygpu-operator"), folder / "kc", namespace)


@contextlib.contextmanager
def one_operator(kube: Kube, namespace: str, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One operator process (no leader election) on the e2e worker image, as the operator ServiceAccount.

    Stopped (SIGTERM, then SIGKILL) on exit, and the tail of its log written to stdout.
    """
    kubeconfig = _operator_kubeconfig(kube, namespace, folder)
    process = _replica(kubeconfig, namespace, "operator", folder / "operator.log",
                       ["--worker-image", "legacygpu/worker:e2e"])
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        sys.stdout.write((folder / "operator.log").read_text()[-3000:])


@contextlib.contextmanager
def operator_replicas(
    kube: Kube, namespace: str, folder: Path, *, names: Iterable[str] = ("a", "b"), extra: Iterable[str] = ()
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Operator processes with leader election, one per name, as the operator ServiceAccount.

    Stopped (SIGTERM, then SIGKILL) on exit; the tail of each one's log is written to stdout,
    which pytest shows for a failed test.
    """
    kubeconfig = _operator_kubeconfig(kube, namespace, folder)
    extra = ["--leader-elect", "--lease-namespace", namespace, *extra]
    running = {name: _replica(kubeconfig, namespace, name, folder / f"{name}.log", extra) for name in names}
    try:
        yield running
    finally:
        for process in running.values():
            if process.poll() is None:
                process.terminate()
        for process in running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for name in running:
            sys.stdout.write(f"--- operator {name} ---\n{(folder / f'{name}.log').read_text()[-3000:]}\n")


@contextlib.contextmanager
def busy_operators(
    kube: Kube, namespace: str, worker_command: Callable[[str], None], folder: Path, *,
    names: Iterable[str] = ("a", "b"),
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:  # fmt: skip
    """:func:`busy_workers` and :func:`operator_replicas` (quiet, on the e2e worker image): the fault tests' setup."""
    busy_workers(worker_command, folder)
    extra = ["--worker-image", "legacygpu/worker:e2e", "--log-level", "warning"]
    with operator_replicas(kube, namespace, folder, names=names, extra=extra) as running:
        yield running


def busy_workers(worker_command: Callable[[str], None], folder: Path) -> None:
    """Make the simulator's worker pods run the real worker on the ``busy`` model (tens of ms a task)."""
    from helpers import slow_model

    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.modelinfo import card_from_onnx

    models = folder / "models"
    models.mkdir(exist_ok=True)
    path = slow_model(folder / "busy.onnx", layers=20, rows=64, width=BUSY_WIDTH)
    ModelRepository(models).add(card_from_onnx("busy", path), path)
    worker_command(shlex.join([sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes",
                               "--backend", "onnxruntime", "--model-dir", str(models)]))


def lease_holder(kube: Kube, namespace: str) -> str | None:
    """Who holds the operator's Lease, if anyone."""
    lease = kube.get("coordination.k8s.io/v1", "Lease", "legacygpu-operator", namespace)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def tasks(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return list(kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"])


def phases(kube: Kube, namespace: str) -> Counter[str]:
    """How many tasks are in each phase (``Pending`` for those with no status yet)."""
    return Counter(((t.get("status") or {}).get("phase") or "Pending") for t in tasks(kube, namespace))


def create_tasks(kube: Kube, namespace: str, count: int, *, cluster: str = "busy", model: str = "busy") -> None:
    """Create ``count`` tasks ``t0000``... on ``cluster``, eight at a time."""

    def create(index: int) -> None:
        body = {"apiVersion": API, "kind": "InferenceTask", "metadata": {"name": f"t{index:04d}"},
                "spec": {"clusterRef": cluster, "model": model, "inputs": [BUSY_INPUT]}}
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
