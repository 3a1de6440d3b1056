"""Pods run from their container images on the simulated nodes (worker-command template ``{image}``).

Local cluster only: the simulator plays the kubelet and runs each pod's container from the
image ``make images`` built (buildah, chroot isolation). The pod below checks, from inside
the worker image, what a kubelet must give a container: the securityContext's user, the
working dir, env (literal, ``$(VAR)``, Secret, fieldRef), ConfigMap/Secret/emptyDir volumes,
the ServiceAccount token with which it authenticates in-cluster, and it serves the HTTP
readiness probe that makes the pod Ready.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from e2ecluster import Kube
from e2ecluster.images import Buildah, ImageError, build_images, image_ref, unavailable
from e2ecluster.podimage import CONTAINER_PREFIX, IMAGE_TEMPLATE

INSIDE = r"""
import http.server, json, os, pathlib, sys
from kubernetes import client, config
config.load_incluster_config()
review = client.AuthenticationV1Api().create_self_subject_review({"apiVersion": "authentication.k8s.io/v1",
                                                                  "kind": "SelfSubjectReview"})
pathlib.Path("/tmp/scratch").write_text("emptyDir is writable")
seen = {
    "argv": sys.argv[1:], "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
    "greeting": os.environ.get("GREETING"), "password": os.environ.get("PASSWORD"),
    "node": os.environ.get("NODE_NAME"), "host_path": os.environ.get("PATH"),
    "config": pathlib.Path("/etc/app/settings.yaml").read_text(),
    "secret": pathlib.Path("/etc/secret/token-file").read_text(),
    "user": review.status.user_info.username,
}
print("SEEN " + json.dumps(seen), flush=True)
http.server.HTTPServer((os.environ["POD_IP"], 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def _pod(name: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "securityContext": {"runAsUser": 10002, "runAsGroup": 10003},
            "containers": [{
                "name": "main",
                "image": image,
                "command": ["python", "-c", INSIDE],
                "args": ["$(GREETING)", "plain"],
                "workingDir": "/etc/app",
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                ],
                "volumeMounts": [
                    {"name": "settings", "mountPath": "/etc/app"},
                    {"name": "creds", "mountPath": "/etc/secret", "readOnly": True},
                    {"name": "scratch", "mountPath": "/tmp"},
                ],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }],
            "volumes": [
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "token", "path": "token-file"}]}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def worker_image() -> str:
    problem = unavailable()
    if problem:
        pytest.skip(problem)
    try:
        build_images("worker")  # cached; tests/images/conftest.py builds it before any test in a full run
    except ImageError as exc:
        pytest.fail(str(exc))
    return image_ref("worker")


@pytest.mark.timeout(1800)  # a cold image build when run on its own
def test_pod_runs_from_its_image_with_its_user_env_volumes_and_token(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None], worker_image: str
) -> None:
    kube = simulated_kube
    worker_command(IMAGE_TEMPLATE)
    kube.core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                      "data": {"settings.yaml": "level: 3\n"}})  # fmt: skip
    kube.core.create_namespaced_secret(namespace, {"metadata": {"name": "creds"},
                                                  "stringData": {"password": "s3cret", "token": "t0ken"}})  # fmt: skip
    kube.core.create_namespaced_pod(namespace, _pod("from-image", worker_image))

    def ready() -> bool:
        pod = kube.core.read_namespaced_pod("from-image", namespace)
        return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])

    log = kube.pod_dir(namespace, "from-image") / "main.log"
    try:
        kube.wait_for(ready, timeout=180, what="the pod to pass its readiness probe")
    except Exception:
        raise AssertionError(log.read_text()[-3000:] if log.exists() else "no log") from None
    line = next(x for x in log.read_text().splitlines() if x.startswith("SEEN "))
    seen = json.loads(line.removeprefix("SEEN "))
    pod = kube.core.read_namespaced_pod("from-image", namespace)
    assert seen["argv"] == ["hello", "plain"]
    assert (seen["uid"], seen["gid"]) == (10002, 10003)
    assert seen["cwd"] == "/etc/app"
    assert (seen["greeting"], seen["password"], seen["node"]) == ("hello", "s3cret", pod.spec.node_name)
    assert ".venv" not in seen["host_path"]  # the image's PATH, not the simulator's
    assert seen["config"] == "level: 3\n"
    assert seen["secret"] == "t0ken"
    assert seen["user"] == f"system:serviceaccount:{namespace}:default"
    (status,) = pod.status.container_statuses
    assert status.ready and status.state.running is not None

    kube.core.delete_namespaced_pod("from-image", namespace)
    kube.wait_for(lambda: not _containers_of(pod.metadata.uid), timeout=60, what="the working container to go")


@pytest.mark.timeout(1800)
def test_exit_code_of_the_image_process_becomes_the_pod_status(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None], worker_image: str
) -> None:
    kube = simulated_kube
    worker_command(IMAGE_TEMPLATE)
    pod = {
        "metadata": {"name": "exits"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": worker_image, "command": ["sh", "-c", "exit 3"]}]},
    }  # fmt: skip
    kube.core.create_namespaced_pod(namespace, pod)
    done = kube.wait_pod_phase(namespace, "exits", "Failed", timeout=120)
    (status,) = done.status.container_statuses
    assert status.state.terminated.exit_code == 3
    assert not _containers_of(done.metadata.uid)


def _containers_of(uid: str) -> list[str]:
    names = Buildah().call("containers", "--format", "{{.ContainerName}}").split()
    return [n for n in names if n.startswith(CONTAINER_PREFIX + uid[:18])]


@pytest.mark.timeout(1800)
def test_failing_liveness_probe_restarts_the_container(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None], worker_image: str
) -> None:
    kube = simulated_kube
    worker_command(IMAGE_TEMPLATE)
    probe = {"tcpSocket": {"port": 9}, "initialDelaySeconds": 2, "periodSeconds": 1,
             "failureThreshold": 2}  # nothing listens on port 9  # fmt: skip
    pod = {
        "metadata": {"name": "unhealthy"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": worker_image, "command": ["sleep", "300"],
                                 "livenessProbe": probe}]},
    }  # fmt: skip
    kube.core.create_namespaced_pod(namespace, pod)

    def restarted() -> Any:
        status = kube.core.read_namespaced_pod("unhealthy", namespace).status
        statuses = status.container_statuses or []
        return statuses and statuses[0].restart_count >= 1 and statuses[0].last_state.terminated

    terminated = kube.wait_for(restarted, timeout=120, what="a restart after the liveness probe failed")
    # 143 (SIGTERM) once the process runs; buildah exits 1 when killed while still setting up.
    assert terminated.exit_code != 0 and terminated.reason == "Error"
