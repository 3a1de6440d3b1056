"""The chart installed from the built images, used as its NOTES say, ``helm test``-ed and uninstalled.

Local cluster only. One ``helm install`` (module fixture) of charts/legacygpu with
``images.*.repository``/``tag`` pointing at what ``make images`` built, the simulator in image
mode (``{image}``), so that the operator (both replicas), the REST facade, the workers the
operator creates and the hook and test pods all run from their images (buildah, chroot; see
e2e/e2ecluster/podimage.py). Then, in order:

- every pod of the release runs from its image and is Ready; one operator replica holds the Lease;
- the NOTES' steps, taken from the install's own output and run with bash as written: step 1
  (the InferenceCluster with the demo model ``digits``, which the images ship, and
  ``kubectl wait``), step 2 (the token from the Secret), step 3 (``legacygpu task submit`` of
  ``examples/digits/digit-7.png``, classified as 7). Only the ``port-forward`` line is replaced by
  the facade pod's address: the stand-in has no kubelet streaming server;
- ``helm test`` runs the chart's test pod, which does one inference through the facade's Service;
- ``helm uninstall`` runs the pre-delete hook, and every object the API server lists (all
  namespaced and cluster-scoped kinds, Events aside) is what it was before the install, except the
  CRDs, which helm never deletes.

The node agent is off here: its pods need hostPath volumes (the kubelet's device-plugin folder, /sys,
/dev/dri) that the stand-in does not simulate (docs/images.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.helmchart import CHART, helm
from e2ecluster import Kube
from e2ecluster.cluster import DEFAULT_WORKER_COMMAND
from e2ecluster.images import Buildah, ImageError, build_images, image_ref, unavailable
from e2ecluster.podimage import CONTAINER_PREFIX, IMAGE_TEMPLATE
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
TOOLS = [REPO / ".cache" / "bin", Path(sys.executable).parent]
SKIPPED_KINDS = {"events", "events.events.k8s.io", "componentstatuses"}


@dataclass
class Release:
    name: str
    namespace: str
    ml: str
    notes: str
    before: set[str]

    def obj(self, component: str) -> str:
        return f"{self.name}-legacygpu-{component}"


def _env(kube: Kube) -> dict[str, str]:
    path = os.pathsep.join([*map(str, TOOLS), os.environ.get("PATH", "/usr/bin:/bin")])
    return {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "PATH": path}


def _kubectl(kube: Kube, *args: str, timeout: float = 120) -> str:
    out = subprocess.run([str(TOOLS[0] / "kubectl"), *args], env=_env(kube), capture_output=True, text=True,
                         timeout=timeout, check=False)  # fmt: skip
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


def _inventory(kube: Kube) -> set[str]:
    """Every object of every listable kind, namespaced or not, as ``group/Kind/namespace/name`` (Events aside)."""
    kinds = [k for k in _kubectl(kube, "api-resources", "--verbs=list", "-o", "name").split() if k not in SKIPPED_KINDS]
    items = json.loads(_kubectl(kube, "get", ",".join(kinds), "--all-namespaces", "-o", "json"))["items"]
    return {f"{i['apiVersion'].rpartition('/')[0] or 'core'}/{i['kind']}/{i['metadata'].get('namespace', '')}/"
            f"{i['metadata']['name']}" for i in items}  # fmt: skip


def _helm(kube: Kube, *args: str, timeout: float = 600) -> str:
    return helm(*args, env={"KUBECONFIG": str(kube.kubeconfig)}, timeout=timeout)


def _pods(kube: Kube, release: Release, namespace: str | None = None, **selector: str) -> list[Any]:
    labels = {"app.kubernetes.io/instance": release.name, **selector}
    sel = ",".join(f"{k}={v}" for k, v in labels.items())
    return list(kube.core.list_namespaced_pod(namespace or release.namespace, label_selector=sel).items)


def _containers_of(uid: str) -> list[str]:
    names = Buildah().call("containers", "--format", "{{.ContainerName}}").split()
    return [n for n in names if n.startswith(CONTAINER_PREFIX + uid[:18])]


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _pod_logs(kube: Kube, namespace: str) -> str:
    """The simulator's logs of every pod in ``namespace`` (for failure messages)."""
    root = kube.pod_dir(namespace, "x").parent
    return "\n".join(f"== {p.parent.name}/{p.name}\n{p.read_text()[-2500:]}"
                     for p in sorted(root.glob(f"{namespace}_*/*.log")))  # fmt: skip


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[Release]:
    if not kube.simulated:
        pytest.skip("needs the local simulated cluster (E2E_KUBECONFIG is set)")
    problem = unavailable()
    if problem:
        pytest.skip(problem)
    try:
        build_images("worker", "operator")  # cached: tests/images builds them first in a full run
    except ImageError as exc:
        pytest.fail(str(exc))
    kube.set_worker_command(IMAGE_TEMPLATE)
    ns, ml = kube.create_namespace("chartimg"), kube.create_namespace("chartimg-ml")
    kube.wait_for(lambda: all(_has_root_ca(kube, n) for n in (ns, ml)), timeout=60, what="kube-root-ca.crt")
    before = _inventory(kube)
    name = f"img{uuid.uuid4().hex[:5]}"
    worker_repo, worker_tag = image_ref("worker").split(":")
    operator_repo, operator_tag = image_ref("operator").split(":")
    values = {
        "images": {"operator": {"repository": operator_repo, "tag": operator_tag},
                   "worker": {"repository": worker_repo, "tag": worker_tag}},
        "worker": {"namespaces": [ns, ml]},
        "api": {"clusterNamespace": ml, "clusterName": "digits"},
        "nodeAgent": {"enabled": False},  # hostPath volumes: see the module docstring
    }  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(values, handle)
    try:
        try:
            notes = _helm(kube, "install", name, str(CHART), "-n", ns, "-f", handle.name, "--wait", "--timeout", "8m")
        except Exception as exc:
            raise AssertionError(f"{exc}\n{_pod_logs(kube, ns)}") from None
        yield Release(name, ns, ml, notes, before)
    finally:
        os.unlink(handle.name)
        with contextlib.suppress(Exception):
            _helm(kube, "uninstall", name, "-n", ns, "--wait", "--timeout", "4m")
        for namespace in (ns, ml):
            with contextlib.suppress(ApiException):
                kube.core.delete_namespace(namespace)
        kube.set_worker_command(DEFAULT_WORKER_COMMAND)


def _has_root_ca(kube: Kube, namespace: str) -> bool:
    return any(c.metadata.name == "kube-root-ca.crt" for c in kube.core.list_namespaced_config_map(namespace).items)


@pytest.mark.timeout(2400)  # a cold image build when run on its own
def test_every_pod_of_the_release_runs_from_its_image(kube: Kube, release: Release) -> None:
    operators = _pods(kube, release, **{"app.kubernetes.io/component": "operator"})
    facades = _pods(kube, release, **{"app.kubernetes.io/component": "api"})
    assert len(operators) == 2 and len(facades) == 1
    for pod in [*operators, *facades]:
        assert pod.spec.containers[0].image == image_ref("operator")
        assert _ready(pod), f"{pod.metadata.name} is not Ready"
        assert _containers_of(pod.metadata.uid), f"{pod.metadata.name} has no working container of its image"
    lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(release.obj("operator"), release.namespace)
    assert lease.spec.holder_identity in {p.metadata.name for p in operators}


def _notes_step(notes: str, number: int) -> str:
    """The shell lines of NOTES step ``number`` (indented lines after ``<number>. ``)."""
    block = notes.split(f"\n{number}. ", 1)[1].split(f"\n{number + 1}. ", 1)[0]
    return "\n".join(line for line in block.splitlines()[1:] if line.startswith("  ")).strip()


@pytest.mark.timeout(900)
def test_the_notes_steps_work_as_written(kube: Kube, release: Release) -> None:
    step1, step2, step3 = (_notes_step(release.notes, n) for n in (1, 2, 3))
    assert "kubectl apply" in step1 and '"models": ["digits"]' in step1, step1
    assert "port-forward" in step2 and "legacygpu task submit --model digits" in step3
    (facade,) = _pods(kube, release, **{"app.kubernetes.io/component": "api"})
    # The stand-in has no kubelet streaming server for port-forward: the facade's pod address instead.
    step2 = re.sub(r"^\s*kubectl .* port-forward .*&$", "", step2, flags=re.M)
    step2 = re.sub(r"^\s*export LEGACYGPU_API_URL=.*$", f"export LEGACYGPU_API_URL=http://{facade.status.pod_ip}:8000",
                   step2, flags=re.M)  # fmt: skip
    assert "port-forward" not in step2 and f"{facade.status.pod_ip}:8000" in step2, step2
    script = "\n".join(["set -euo pipefail", step1, step2, "echo", step3])
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env=_env(kube), capture_output=True, text=True,
                         timeout=840, check=False)  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(f"NOTES steps failed ({out.returncode}):\n{script}\n{out.stdout}\n{out.stderr}\n"
                             f"{_pod_logs(kube, release.ml)}")  # fmt: skip
    assert re.search(r'"status":\s*"ok".*"workers_active":\s*1\b', out.stdout), "step 2's health check"
    lines = out.stdout.splitlines()
    assert any(re.match(r"task \S+: Succeeded$", line) for line in lines), out.stdout
    first_class = lines[lines.index("top classes:") + 1].split()[0]
    assert first_class == "7", f"digit-7.png classified as {first_class}:\n{out.stdout}"
    (worker,) = kube.core.list_namespaced_pod(release.ml, label_selector="app.kubernetes.io/component=worker").items
    assert worker.spec.containers[0].image == image_ref("worker")
    assert worker.spec.service_account_name == release.obj("worker")
    assert _containers_of(worker.metadata.uid), "the worker runs from its image"


@pytest.mark.timeout(600)
def test_helm_test_runs_an_inference_through_the_facade(kube: Kube, release: Release) -> None:
    # No --logs: helm reads them through the kubelet's log endpoint, which the stand-in does not serve;
    # the simulator keeps the pod's output in its folder instead. helm fails unless the pod exits 0.
    try:
        out = _helm(kube, "test", release.name, "-n", release.namespace, "--timeout", "5m")
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_pod_logs(kube, release.namespace)}") from None
    assert re.search(r"Phase:\s+Succeeded", out), out
    log = (kube.pod_dir(release.namespace, release.obj("test")) / "inference.log").read_text()
    # The test pod's line: task id, phase, reason, message, top_k.
    line = next((x for x in log.splitlines() if " Succeeded " in x and "[{" in x), None)
    assert line is not None and "'label'" in line and "'score'" in line, log


@pytest.mark.timeout(900)
def test_uninstall_leaves_nothing_of_the_release(kube: Kube, release: Release) -> None:
    custom = client.CustomObjectsApi(kube.api)
    assert custom.list_namespaced_custom_object("legacygpu.io", "v1alpha1", release.ml, "inferenceclusters")["items"]
    assert custom.list_namespaced_custom_object("legacygpu.io", "v1alpha1", release.ml, "inferencetasks")["items"]
    try:
        _helm(kube, "uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "5m")
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_pod_logs(kube, release.namespace)}") from None

    # helm never deletes crds/; the API server registers an APIService for each CRD group version.
    kept = ("apiextensions.k8s.io/CustomResourceDefinition//",
            "apiregistration.k8s.io/APIService//v1alpha1.legacygpu.io")  # fmt: skip

    def left() -> set[str]:
        return {k for k in _inventory(kube) - release.before if not k.startswith(kept)}

    with contextlib.suppress(Exception):  # pods and ReplicaSets go through the garbage collector after helm returns
        kube.wait_for(lambda: not left(), timeout=180, interval=2, what="the release's objects gone")
    assert sorted(left()) == [], "helm uninstall left objects behind"
    assert not custom.list_namespaced_custom_object("legacygpu.io", "v1alpha1", release.ml, "inferencetasks")["items"]
