"""Real-time serving in Kubernetes mode: Triton's client against the facade and the worker pods.

Real: the API server, scheduler and garbage collector; the operator as a local process
authenticated as its ServiceAccount; each worker pod's process (``legacygpu worker start
--kubernetes``, onnxruntime on the demo digits model) with its own ServiceAccount token, serving
the Open Inference Protocol on its pod IP (127.1.x.y) at the ports the operator declared; the
facade as a process (``legacygpu api serve --backend kubernetes``, with the admin kubeconfig:
the facade's own RBAC is the chart's business); ``tritonclient`` from PyPI. Simulated: only the
kubelets, whose stand-in runs the pods' readiness and liveness probes (``/v2/health/ready``,
``/v2/health/live`` on the ``http-v2`` port) and sets the pods' Ready condition from them.

REST and gRPC go to the facade (which forwards them to the Ready pods) and straight to a worker pod's ports
8000 and 8001; the guide's Kubernetes serving examples run against the same deployment.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from e2ecluster import Kube
from e2ecluster.errors import WaitTimeout
from tritonclient.utils import InferenceServerException

from legacygpu.operator.crdgen import all_crds
from legacygpu.operator.rbac import rbac_manifests

REPO = Path(__file__).resolve().parents[2]
DIGITS = [REPO / "examples" / "digits" / f"digit-{d}.png" for d in (0, 3, 7)]
API = "legacygpu.io/v1alpha1"
TOKEN = "e2e-serving-token-0123456789abcdef"

pytestmark = pytest.mark.slow


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import free_port

    return int(free_port())


@pytest.fixture
def deployment(simulated_kube: Kube, namespace: str, worker_command: Any, demo_repository: Path,
               tmp_path: Path) -> Iterator[tuple[Kube, str, str]]:
    """CRDs, RBAC, the operator, a 2-worker digits InferenceCluster (Ready) and the facade on it.

    Yields the kube, the facade's REST URL and its gRPC address.
    """
    kube = simulated_kube
    worker_command(shlex.join([sys.executable, "-m", "legacygpu.cli", "worker", "start", "--kubernetes",
                               "--backend", "onnxruntime", "--model-dir", str(demo_repository)]))
    kube.apply(all_crds())
    kube.apply(rbac_manifests(namespace=namespace))
    operator_config = kube.kubeconfig_for_token(kube.token(namespace, "legacygpu-operator"),
                                                tmp_path / "operator.kubeconfig", namespace)
    operator_log = tmp_path / "operator.log"
    operator = subprocess.Popen(
        [sys.executable, "-m", "legacygpu.cli", "operator", "run", "--kubeconfig", str(operator_config),
         "--namespace", namespace, "--no-metrics", "--worker-image", "legacygpu/worker:e2e"],
        stdout=operator_log.open("w"), stderr=subprocess.STDOUT,
    )
    data = tmp_path / "facade"
    shutil.copytree(demo_repository, data / "models")
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "LEGACYGPU_API_TOKEN": TOKEN,
           "LEGACYGPU_KUBE_NAMESPACE": namespace, "LEGACYGPU_KUBE_CLUSTER": "digits"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    facade_log = tmp_path / "facade.log"
    facade = subprocess.Popen(
        [sys.executable, "-m", "legacygpu.cli", "api", "serve", "--backend", "kubernetes", "--port", str(port),
         "--grpc-port", str(grpc_port), "--data-dir", str(data), "--log-level", "warning"],
        env=env, stdout=facade_log.open("w"), stderr=subprocess.STDOUT,
    )
    try:
        cluster = {"apiVersion": API, "kind": "InferenceCluster", "metadata": {"name": "digits"},
                   "spec": {"replicas": 2, "backend": "onnxruntime", "gpusPerWorker": 1, "models": ["digits"],
                            "serviceAccountName": "legacygpu-worker", "tasksPerWorker": 2}}
        kube.apply(cluster, namespace)
        kube.wait_condition(API, "InferenceCluster", "digits", "WorkersReady", namespace=namespace, timeout=240)
        url = f"http://127.0.0.1:{port}"
        kube.wait_for(lambda: _status(f"{url}/v2/health/live") == 200, timeout=120, what="the facade listening")
        yield kube, url, f"127.0.0.1:{grpc_port}"
    finally:
        _stop(facade)
        _stop(operator)
        sys.stdout.write(facade_log.read_text()[-3000:])
        sys.stdout.write(operator_log.read_text()[-3000:])


def _status(url: str) -> int | None:
    """The status code of a GET, None while nothing listens there."""
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.TransportError:
        return None


def _ready_pods(kube: Kube, namespace: str) -> list[Any]:
    pods = kube.core.list_namespaced_pod(namespace, label_selector="legacygpu.io/cluster=digits").items
    return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ())]


def _images() -> np.ndarray:
    return np.array([p.read_bytes() for p in DIGITS], dtype=object)


def _infer_http(url: str) -> list[int]:
    client = triton_http.InferenceServerClient(url.removeprefix("http://"), network_timeout=60.0)
    tensor = triton_http.InferInput("input", [len(DIGITS)], "BYTES")
    tensor.set_data_from_numpy(_images())  # binary tensor data, as Triton's client sends it
    result = client.infer("digits", [tensor], headers={"Authorization": f"Bearer {TOKEN}"})
    return [int(i) for i in result.as_numpy("probabilities").argmax(axis=1)]


def _task_top1(url: str, image: Path) -> int:
    """The asynchronous task path through the same facade: an InferenceTask run by a worker pod."""
    data = [base64.b64encode(image.read_bytes()).decode()]
    inputs = [{"name": "input", "shape": [1], "datatype": "BYTES", "data": data}]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        created = client.post("/cluster/tasks/submit", json={"model": "digits", "inputs": inputs})
        assert created.status_code in (200, 201), created.text
        task_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            task = client.get(f"/cluster/tasks/{task_id}").json()
            if task["phase"] in ("Succeeded", "Failed"):
                assert task["phase"] == "Succeeded", task
                return int(task["result"]["top_k"][0]["index"])
            time.sleep(0.25)
    raise AssertionError(f"task {task_id} did not finish")


def test_tritonclient_through_the_facade_on_ready_worker_pods_and_a_killed_worker_loses_no_request(
    deployment: tuple[Kube, str, str], namespace: str
) -> None:
    kube, url, grpc_address = deployment
    pods = kube.wait_for(lambda: (lambda p: p if len(p) == 2 else None)(_ready_pods(kube, namespace)),
                         timeout=120, what="2 Ready worker pods")
    for pod in pods:  # Ready came from the kubelet stand-in probing the protocol's health endpoints
        container = pod.spec.containers[0]
        assert container.readiness_probe.http_get.path == "/v2/health/ready"
        assert container.liveness_probe.http_get.path == "/v2/health/live"
        ports = {p.name: p.container_port for p in container.ports}
        assert (ports["http-v2"], ports["grpc-v2"]) == (8000, 8001)
        assert httpx.get(f"http://{pod.status.pod_ip}:8000/v2/health/ready", timeout=10).json() == {"ready": True}

    # The facade's /v2 is ready once it has found the Ready pods of its InferenceCluster.
    kube.wait_for(lambda: _status(f"{url}/v2/health/ready") == 200, timeout=60, what="the facade's /v2 ready")
    expected = [_task_top1(url, image) for image in DIGITS]
    assert expected == [0, 3, 7]
    assert _infer_http(url) == expected

    assert _infer_http(f"http://{pods[0].status.pod_ip}:8000") == expected  # a worker pod, directly
    _run_the_guides_examples(url, grpc_address, pods[0].status.pod_ip)

    tensor = triton_grpc.InferInput("input", [len(DIGITS)], "BYTES")
    tensor.set_data_from_numpy(_images())
    grpc_client = triton_grpc.InferenceServerClient(f"{pods[0].status.pod_ip}:8001")  # a worker pod, directly
    assert grpc_client.is_server_ready() and grpc_client.is_model_ready("digits")
    result = grpc_client.infer("digits", [tensor])
    assert [int(i) for i in result.as_numpy("probabilities").argmax(axis=1)] == expected
    # The facade's gRPC forwards to the same Ready pods, with the token as metadata.
    facade_grpc = triton_grpc.InferenceServerClient(grpc_address)
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert facade_grpc.is_model_ready("digits", headers=auth)
    result = facade_grpc.infer("digits", [tensor], headers=auth)
    assert [int(i) for i in result.as_numpy("probabilities").argmax(axis=1)] == expected
    with pytest.raises(InferenceServerException) as refused:
        facade_grpc.infer("digits", [tensor])
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"

    # Without the token the facade refuses; with a wrong shape it names the tensor.
    assert httpx.post(f"{url}/v2/models/digits/infer", json={}, timeout=10).status_code == 401
    bad = httpx.post(f"{url}/v2/models/digits/infer", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"},
                     json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert bad.status_code == 400 and "input" in bad.json()["error"], bad.text

    # Under load (4 clients) a worker process dies while its pod still shows Ready: the facade's requests
    # to it fail and go once more to the other pod, and no request is lost.
    crashed, deleted = pods[0].metadata.name, pods[1].metadata.name
    with _under_load(url) as (answers, failures):
        kube.wait_for(lambda: len(answers) >= 20, timeout=120, what="requests flowing through the facade")
        pid = kube.worker_pid(namespace, crashed)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        try:
            kube.wait_for(lambda: _retries(url) >= 1, timeout=60, what="a request retried on the other worker")
        except WaitTimeout as exc:  # say what the facade saw: did it send anything to the killed pod at all?
            ready = [p.metadata.name for p in _ready_pods(kube, namespace)]
            raise AssertionError(f"{exc}; killed {crashed}; Ready pods now {ready}; failures {failures[:5]}; "
                                 f"facade: {_serving_metrics(url)}") from exc
        # Restarted: a new process, answering its own readiness (the pod's Ready condition may still be the
        # old process's until the stand-in kubelet's next probe).
        crashed_ip = pods[0].status.pod_ip
        kube.wait_for(lambda: kube.worker_pid(namespace, crashed) not in (None, pid)
                      and _status(f"http://{crashed_ip}:8000/v2/health/ready") == 200, timeout=180,
                      what=f"{crashed} restarted and ready again")
        kube.wait_for(lambda: (lambda p: p if len(p) == 2 else None)(_ready_pods(kube, namespace)), timeout=180,
                      what=f"{crashed} Ready again")
        before = len(answers)
        kube.wait_for(lambda: len(answers) >= before + 20, timeout=120, what="requests after the restart")
    assert not failures, failures[:5]
    assert len(answers) >= 40 and all(a == [0, 3, 7] for a in answers)

    # A pod deleted under the same load, as `kubectl delete pod` or a scale-down deletes it (the pod's grace
    # period): the worker turns not Ready on its SIGTERM, goes on answering for a few seconds while the facade
    # drops the pod (it has a deletionTimestamp), finishes what it holds, and exits; a request that still
    # meets it closing is sent once more to the other pod. No request fails, before, during or after.
    with _under_load(url) as (more, in_flight_failures):
        kube.wait_for(lambda: len(more) >= 20, timeout=120, what="requests before the deletion")
        kube.core.delete_namespaced_pod(deleted, namespace)
        kube.wait_for(lambda: kube.get("v1", "Pod", deleted, namespace) is None, timeout=60, what=f"{deleted} gone")
        before = len(more)
        kube.wait_for(lambda: len(more) >= before + 20, timeout=120, what="requests after the deletion")
    assert not in_flight_failures, f"requests failed while {deleted} was deleted under load: {in_flight_failures}"
    answers += more + [_infer_http(url) for _ in range(20)]
    assert all(a == [0, 3, 7] for a in answers)
    sys.stdout.write(f"{len(answers)} requests, {_retries(url):.0f} retried on another worker\n")


GUIDE = REPO / "docs" / "CLUSTER_DEPLOYMENT_GUIDE.md"
_NOT_RUN = ("export LEGACYGPU_API_TOKEN=$(kubectl ", "kubectl -n ", "sleep ")
"""Lines of the guide's examples left out here: the token from the chart's Secret (the test has its own), the
port-forwards (the stand-in kubelets forward no ports: the addresses are put in instead) and their waits."""


def _run_the_guides_examples(url: str, grpc_address: str, pod_ip: str) -> None:
    """The guide's Kubernetes serving examples (Part 2, section 10) as written but for the addresses and the
    token (:data:`_NOT_RUN`): each prints what its ``# ...`` comments say."""
    guide = GUIDE.read_text()
    section = guide[guide.index("### 10. Real-time serving"):]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", section, re.DOTALL)
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash"]
    addresses = {"127.0.0.1:8000": url.removeprefix("http://"), "127.0.0.1:8001": grpc_address,
                 "127.0.0.1:9001": f"{pod_ip}:8001"}
    env = {**os.environ, "LEGACYGPU_API_TOKEN": TOKEN, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for lang, code in blocks:
        script = "\n".join(line for line in code.splitlines() if not line.startswith(_NOT_RUN))
        for written, actual in addresses.items():
            script = script.replace(written, actual)
        argv = ["bash", "-c", script] if lang == "bash" else [sys.executable, "-c", script]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False)
        assert done.returncode == 0, f"{script}\n{done.stderr}"
        printed = re.findall(r"^# (.*)$", code, re.MULTILINE)
        assert done.stdout.strip().splitlines() == printed, f"{script}\n{done.stdout}"


@contextlib.contextmanager
def _under_load(url: str, clients: int = 4) -> Iterator[tuple[list[list[int]], list[str]]]:
    """``clients`` threads sending digits requests through the facade one after another until the block ends.

    Yields the answers (top-1 lists) and the failures (each named), both filled while the block runs.
    """
    answers: list[list[int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                answers.append(_infer_http(url))
            except InferenceServerException as exc:  # the facade's answer: its status and error body
                failures.append(f"{time.strftime('%H:%M:%S')} HTTP {exc.status()}: {exc.message()}")
            except Exception as exc:  # counted, and the test fails naming it
                failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc!r}")

    threads = [threading.Thread(target=load) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield answers, failures
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def _serving_metrics(url: str) -> list[str]:
    """The facade's ``legacygpu_serving_*`` samples, to explain a failure."""
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}).text
    return [line for line in text.splitlines() if line.startswith("legacygpu_serving_")]


def _retries(url: str) -> float:
    """The facade's ``legacygpu_serving_retries_total`` for digits."""
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}).text
    found = re.search(r'^legacygpu_serving_retries_total\{model="digits"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
