"""The chart installed from the built images, used as its NOTES say, ``helm test``-ed and uninstalled.

Local cluster only. One ``helm install`` (module fixture) of charts/legacygpu with
``images.*.repository``/``tag`` pointing at what ``make images`` built, the simulator in image
mode (``{image}``), so that the operator (both replicas), the REST facade, the node agent, the
workers the operator creates and the hook and test pods all run from their images (buildah, chroot;
see e2e/e2ecluster/podimage.py). Then, in order:

- every pod of the release runs from its image and is Ready; one operator replica holds the Lease;
- the node agent's DaemonSet pod runs from the worker image on the one node labelled as Node Feature
  Discovery labels an AMD card (``feature.node.kubernetes.io/pci-1002.present=true``), with its
  hostPath volumes bound from that node's simulated host file system (e2e/e2ecluster/nodefs.py),
  which holds three fixture RX 580s where the simulator's nodes have a fixed two. It registers with
  the stand-in's device manager (e2e/e2ecluster/devicemanager.py), whose ``ListAndWatch`` sets the
  node's ``legacygpu.io/gpu`` capacity to 3; it labels the node ``legacygpu.io/gpu.present=true``
  (taken off before the install) and ``gpu.count=3``; its /metrics has per-GPU gauges read from the
  fixture files. The other simulated nodes are cordoned for the release's life, so the NOTES'
  worker can only be scheduled against the GPUs the agent advertised;
- the NOTES' steps, taken from the install's own output and run with bash as written: step 1
  (the InferenceCluster with the demo model ``digits``, which the images ship, and
  ``kubectl wait``), step 2 (the token from the Secret), step 3 (``legacygpu task submit`` of
  ``examples/digits/digit-7.png``, classified as 7). Only the ``port-forward`` line is replaced by
  the facade pod's address: the stand-in has no kubelet streaming server;
- ``helm test`` runs the chart's test pod, which does one inference through the facade's Service;
- ``helm uninstall`` runs the pre-delete hook, and every object the API server lists (all
  namespaced and cluster-scoped kinds, Events aside) is what it was before the install, except the
  CRDs, which helm never deletes.

Simulated, not real: the cards (fixture sysfs files, plain files for /dev/dri), the kubelet (the
stand-in's device manager: Registration and ListAndWatch only, no Allocate). Real: the agent's code,
image, gRPC over the unix socket in the bound folder, its Node patch through RBAC, its HTTP /metrics.
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

import httpx
import pytest
import yaml
from chart.helmchart import CHART, helm
from e2ecluster import Kube
from e2ecluster.cluster import DEFAULT_WORKER_COMMAND
from e2ecluster.devicemanager import STATE_FILE
from e2ecluster.images import Buildah, ImageError, build_images, image_ref, unavailable
from e2ecluster.nodefs import ensure_tree, node_root
from e2ecluster.nodes import SIMULATED_LABEL
from e2ecluster.podimage import CONTAINER_PREFIX, IMAGE_TEMPLATE
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from legacygpu.testing.sysfs_tree import rx580

REPO = Path(__file__).resolve().parents[2]
TOOLS = [REPO / ".cache" / "bin", Path(sys.executable).parent]
SKIPPED_KINDS = {"events", "events.events.k8s.io", "componentstatuses"}
NFD_LABEL = "feature.node.kubernetes.io/pci-1002.present"  # what Node Feature Discovery puts on an AMD GPU node
PRESENT_LABEL = "legacygpu.io/gpu.present"
AGENT_CARDS = [rx580(i) for i in range(3)]  # the agent node's fixture cards (the simulator's nodes have 2)


@dataclass
class Release:
    name: str
    namespace: str
    ml: str
    notes: str
    before: set[str]
    agent_node: str

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


@contextlib.contextmanager
def _agent_node(kube: Kube) -> Iterator[str]:
    """One simulated node readied for the agent (three cards, NFD's label, not yet the agent's), the rest cordoned.

    Everything is put back afterwards: labels, schedulability and the node's fixture tree.
    """
    names = sorted(n.metadata.name for n in kube.core.list_node(label_selector=f"{SIMULATED_LABEL}=true").items)
    node, others = names[0], names[1:]
    assert kube.cluster is not None
    folder = node_root(kube.cluster.root, node)
    tree = ensure_tree(folder, 2)
    labels_before = dict(kube.core.read_node(node).metadata.labels or {})
    try:
        for card in AGENT_CARDS:
            tree.plug(card)
        kube.core.patch_node(node, {"metadata": {"labels": {NFD_LABEL: "true", PRESENT_LABEL: None}}})
        for other in others:
            kube.core.patch_node(other, {"spec": {"unschedulable": True}})
        yield node
    finally:
        for other in others:
            kube.core.patch_node(other, {"spec": {"unschedulable": None}})
        now = kube.core.read_node(node).metadata.labels or {}
        kube.core.patch_node(node, {"metadata": {"labels": {
            **{k: None for k in now if k not in labels_before}, **labels_before}}})  # fmt: skip
        for card in AGENT_CARDS[2:]:
            tree.unplug(card.pci_address)


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
    try:
        with _agent_node(kube) as agent_node:
            yield from _install(kube, agent_node)
    finally:
        kube.set_worker_command(DEFAULT_WORKER_COMMAND)


def _install(kube: Kube, agent_node: str) -> Iterator[Release]:
    """``helm install`` with the built images, the release for the tests, then ``helm uninstall``."""
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
        # The sysfs health check only: the `opencl` one needs a GPU OpenCL device, which fixture cards are not.
        "nodeAgent": {"enabled": True, "healthChecks": ["sysfs"], "nodeSelector": {NFD_LABEL: "true"}},
    }  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(values, handle)
    try:
        try:
            notes = _helm(kube, "install", name, str(CHART), "-n", ns, "-f", handle.name, "--wait", "--timeout", "8m")
        except Exception as exc:
            raise AssertionError(f"{exc}\n{_pod_logs(kube, ns)}") from None
        yield Release(name, ns, ml, notes, before, agent_node)
    finally:
        os.unlink(handle.name)
        with contextlib.suppress(Exception):
            _helm(kube, "uninstall", name, "-n", ns, "--wait", "--timeout", "4m")
        for namespace in (ns, ml):
            with contextlib.suppress(ApiException):
                kube.core.delete_namespace(namespace)


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


def _gpu_capacity(kube: Kube, node: str) -> tuple[str | None, str | None]:
    status = kube.core.read_node_status(node).status
    return (status.capacity or {}).get("legacygpu.io/gpu"), (status.allocatable or {}).get("legacygpu.io/gpu")


@pytest.mark.timeout(600)
def test_the_node_agent_runs_from_its_image_and_advertises_the_fixture_gpus(kube: Kube, release: Release) -> None:
    (agent,) = _pods(kube, release, **{"app.kubernetes.io/component": "node-agent"})
    assert agent.spec.node_name == release.agent_node
    assert agent.spec.containers[0].image == image_ref("worker")
    assert _ready(agent) and _containers_of(agent.metadata.uid), "the agent runs from the worker image"
    expected = sorted(card.pci_address for card in AGENT_CARDS)

    # Registration + ListAndWatch on the node's kubelet.sock: the stand-in's record and the Node's capacity.
    state_file = node_root(kube.cluster.root, release.agent_node) / STATE_FILE  # type: ignore[union-attr]
    try:
        kube.wait_for(lambda: _gpu_capacity(kube, release.agent_node) == ("3", "3"), timeout=120, interval=1,
                      what="the node's GPU capacity from the agent")  # fmt: skip
    except Exception as exc:
        raise AssertionError(f"{exc}\n{_pod_logs(kube, release.namespace)}") from None
    state = json.loads(state_file.read_text())
    assert state["registration"] == {"version": "v1beta1", "endpoint": "legacygpu.io_gpu.sock",
                                     "resourceName": "legacygpu.io/gpu"}  # fmt: skip
    assert sorted(d["id"] for d in state["devices"]) == expected
    assert {d["health"] for d in state["devices"]} == {"Healthy"}

    # The labeller: gpu.present was taken off before the install; the agent put it back with its count.
    labels = kube.core.read_node(release.agent_node).metadata.labels
    assert labels[PRESENT_LABEL] == "true" and labels["legacygpu.io/gpu.count"] == "3", labels
    assert labels["legacygpu.io/gpu.family"] == "polaris" and labels["legacygpu.io/gpu.vram-mib"] == "8192", labels

    # /metrics on the pod's address: per-GPU gauges with the fixture files' values.
    port = next(p.container_port for p in agent.spec.containers[0].ports if p.name == "metrics")
    text = httpx.get(f"http://{agent.status.pod_ip}:{port}/metrics", timeout=10).text
    samples = {(s.name, s.labels.get("gpu")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    for card in AGENT_CARDS:
        gpu = card.pci_address
        assert samples[("legacygpu_gpu_healthy", gpu)] == 1.0
        assert samples[("legacygpu_gpu_temperature_celsius", gpu)] == card.temperature_millideg / 1000
        assert samples[("legacygpu_gpu_vram_total_bytes", gpu)] == card.vram_bytes
        assert samples[("legacygpu_gpu_power_watts", gpu)] == card.power_microwatts / 1e6
    assert sorted({g for (name, g) in samples if name == "legacygpu_gpu_present"}) == expected

    # The other simulated nodes keep the simulator's fixed count (no agent there).
    others = [n.metadata.name for n in kube.core.list_node(label_selector=f"{SIMULATED_LABEL}=true").items
              if n.metadata.name != release.agent_node]  # fmt: skip
    assert others and all(_gpu_capacity(kube, n) == ("2", "2") for n in others)


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
    assert worker.spec.node_name == release.agent_node, "scheduled against the GPUs the node agent advertised"
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
