"""The node simulator gives each worker pod a real local process, and takes it away.

Local cluster only (the simulator is what plays the kubelet). The worker command is a
harmless shell that records what it was given and sleeps; the operator's tests will
plug the real ``legacygpu worker`` command in through the same template.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2ecluster import Kube
from e2ecluster.podenv import fake_pci_address
from kubernetes import client

RECORDER = (
    'sh -c \'echo "$POD_NAME $POD_NAMESPACE $NODE_NAME $LEGACYGPU_VISIBLE_DEVICES $MODEL $FROM_FIELD" '
    "> {pod_dir}/seen.txt; exec sleep 300'"
)


def test_fake_pci_addresses_have_the_form_the_worker_matches() -> None:
    """The simulator's addresses are spelled as the worker's device choice reads them (sysfs form)."""
    from types import SimpleNamespace

    from legacygpu.worker.opencl.device import pci_address

    bus = SimpleNamespace(pci_domain=0xE2, pci_bus=4, pci_device=0, pci_function=0)
    dev = SimpleNamespace(extensions="cl_khr_pci_bus_info", pci_bus_info_khr=bus)
    assert fake_pci_address(1) == pci_address(dev) == "00e2:04:00.0"
    assert len({fake_pci_address(i) for i in range(16)}) == 16


def _worker_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "worker", "tier": "gpu"}},
        "spec": {
            "serviceAccountName": "worker",
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "worker",
                    "image": "legacygpu/worker:e2e",
                    "command": ["legacygpu", "worker", "start"],
                    "env": [
                        {"name": "MODEL", "value": "digits"},
                        {"name": "FROM_FIELD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
                    ],
                    "resources": {"limits": {"legacygpu.io/gpu": "1"}},
                }
            ],
        },
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_worker_pod_gets_a_process_with_its_identity_and_loses_it_on_delete(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None]
) -> None:
    kube = simulated_kube
    worker_command(RECORDER)
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "worker"}})
    kube.core.create_namespaced_pod(namespace, _worker_pod("w0"))
    pod = kube.wait_pod_phase(namespace, "w0", "Running", timeout=90)
    pid = kube.wait_for(lambda: kube.worker_pid(namespace, "w0"), timeout=30, what="the worker process")
    assert _alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert fh.read().split(b"\0")[:2] == [b"sleep", b"300"]

    seen = kube.pod_dir(namespace, "w0") / "seen.txt"
    text = kube.wait_for(lambda: seen.exists() and seen.read_text().split(), timeout=10, what="seen.txt")
    assert text[:3] == ["w0", namespace, pod.spec.node_name]
    # one of the node's two GPUs, as a PCI address like the node agent's Allocate gives
    assert text[3] in (fake_pci_address(0), fake_pci_address(1))
    assert text[4:] == ["digits", "gpu"]

    # The process's kubeconfig carries a token bound to the pod, for its ServiceAccount.
    token = (kube.pod_dir(namespace, "w0") / "serviceaccount" / "token").read_text()
    sa_api = kube.client_for_token(token)
    try:
        review = client.AuthenticationV1Api(sa_api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:worker"
        assert review.status.user_info.extra["authentication.kubernetes.io/pod-name"] == ["w0"]
    finally:
        sa_api.close()

    kube.core.delete_namespaced_pod("w0", namespace)
    kube.wait_for(lambda: not _alive(pid), timeout=30, what=f"worker pid {pid} to exit")
    kube.wait_gone("v1", "Pod", "w0", namespace, timeout=30)


def test_a_crashed_worker_process_is_restarted_and_counted(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None]
) -> None:
    kube = simulated_kube
    worker_command("sleep 300")
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "worker"}})
    kube.core.create_namespaced_pod(namespace, _worker_pod("w1"))
    kube.wait_pod_phase(namespace, "w1", "Running", timeout=90)
    first = kube.wait_for(lambda: kube.worker_pid(namespace, "w1"), timeout=30, what="the worker process")
    os.kill(first, signal.SIGKILL)

    def restarted() -> Any:
        pod = kube.core.read_namespaced_pod("w1", namespace)
        status = (pod.status.container_statuses or [None])[0]
        return pod if status and status.restart_count == 1 and status.state.running else None

    pod = kube.wait_for(restarted, timeout=60, what="restartCount 1 and running again")
    last = pod.status.container_statuses[0].last_state.terminated
    assert last.exit_code == 128 + signal.SIGKILL
    second = kube.wait_for(lambda: kube.worker_pid(namespace, "w1"), timeout=30, what="the new process")
    assert second != first and _alive(second)


def test_readiness_follows_an_http_probe_on_the_pod_ip(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None]
) -> None:
    kube = simulated_kube
    kube.core.create_namespaced_service_account(namespace, {"metadata": {"name": "worker"}})
    probe = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
    pods = {}
    for name, template in (("serving", "python -m http.server 8080 --bind {pod_ip} --directory {pod_dir}"),
                           ("silent", "sleep 300")):  # fmt: skip
        worker_command(template)
        body = _worker_pod(name)
        body["spec"]["containers"][0].update(readinessProbe=probe, ports=[{"name": "http", "containerPort": 8080}])
        kube.core.create_namespaced_pod(namespace, body)
        pods[name] = kube.wait_pod_phase(namespace, name, "Running", timeout=90)

    def ready(name: str) -> str:
        pod = kube.core.read_namespaced_pod(name, namespace)
        return {c.type: c.status for c in pod.status.conditions}["Ready"]

    kube.wait_for(lambda: ready("serving") == "True", timeout=60, what="the serving pod to turn Ready")
    assert ready("silent") == "False"  # its process runs but nothing answers the probe
    ip = pods["serving"].status.pod_ip
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as resp:  # reachable at its pod IP
        assert resp.status == 200
