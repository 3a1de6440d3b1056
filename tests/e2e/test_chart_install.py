"""``helm install`` of charts/legacygpu on the real API server, and its RBAC put to work.

The real helm (``scripts/get-helm.sh``) installs the chart into a fresh namespace of the
e2e control plane (first ``--dry-run=server``, then for real), with workers and the
facade's InferenceCluster in a second namespace. Then, against the real API server:

- every object exists, the controllers create the operator's pods and the node agent's
  DaemonSet pods on the GPU nodes, and the generated API token survives ``helm upgrade``;
- each chart ServiceAccount, authenticated by its own token, is allowed exactly its job
  (SelfSubjectAccessReview for every rule of ``legacygpu operator rbac``, plus denials);
- the "restricted" PodSecurity admission accepts the operator's and the facade's pods
  and refuses the node agent's (which needs host paths: it is documented as privileged);
- on the local simulated cluster, the real ``legacygpu operator run`` with the chart's
  arguments, environment and operator ServiceAccount turns an InferenceCluster into a
  worker pod that runs as the chart's worker ServiceAccount, and the real facade with the
  chart's environment, token Secret and ServiceAccount submits, reads and cancels a task.
  (The operator and facade run as local processes: the simulator only runs worker pods.)
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from chart.helmchart import CHART, helm
from e2ecluster import Kube
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from legacygpu.operator.rbac import LEASE_RULES, OPERATOR_RULES, WORKER_RULES

LEGACYGPU = Path(sys.executable).with_name("legacygpu")
SLEEPER = "sh -c 'exec sleep 600'"  # worker pods' process: the test needs their identity, not a model


@dataclass
class Release:
    name: str
    namespace: str
    ml: str
    values: dict[str, Any]
    dry_run: str

    def obj(self, component: str) -> str:
        return f"{self.name}-legacygpu-{component}"


def _helm(kube: Kube, *args: str, timeout: float = 180) -> str:
    return helm(*args, env={"KUBECONFIG": str(kube.kubeconfig)}, timeout=timeout)


def _values_file(values: dict[str, Any]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(values, handle)
        return handle.name


@pytest.fixture(scope="module")
def release(kube: Kube) -> Iterator[Release]:
    name = f"lg{uuid.uuid4().hex[:6]}"
    ns = kube.create_namespace("chart")
    ml = kube.create_namespace("chart-ml")
    values = {
        "worker": {"namespaces": [ns, ml]},
        "api": {"clusterNamespace": ml, "clusterName": "digits"},
        # The simulated GPU nodes carry the agent's own label (no Node Feature Discovery there).
        "nodeAgent": {"nodeSelector": {"legacygpu.io/gpu.present": "true"}},
        "operator": {"podDisruptionBudget": {"enabled": True}},
        # No pre-delete hook: its Job would never finish here, where pods run no process
        # (test_chart_images.py runs the hook from the image).
        "uninstall": {"hook": False},
    }
    path = _values_file(values)
    try:
        dry = _helm(kube, "install", name, str(CHART), "--namespace", ns, "-f", path, "--dry-run=server")
        _helm(kube, "install", name, str(CHART), "--namespace", ns, "-f", path)
        yield Release(name, ns, ml, values, dry)
    finally:
        os.unlink(path)
        with contextlib.suppress(Exception):
            _helm(kube, "uninstall", name, "--namespace", ns, "--wait", "--timeout", "60s")
        for namespace in (ns, ml):
            with contextlib.suppress(ApiException):
                kube.core.delete_namespace(namespace)


def test_server_dry_run_then_install_create_every_object(kube: Kube, release: Release) -> None:
    assert "NOTES:" in release.dry_run and f"get secret {release.obj('api-token')}" in release.dry_run
    ns, ml = release.namespace, release.ml
    apps, core, rbac = kube.apps, kube.core, kube.rbac
    assert apps.read_namespaced_deployment(release.obj("operator"), ns).spec.replicas == 2
    assert apps.read_namespaced_deployment(release.obj("api"), ns)
    assert apps.read_namespaced_daemon_set(release.obj("node-agent"), ns)
    assert core.read_namespaced_service(release.obj("api"), ns).spec.ports[0].port == 8000
    assert core.read_namespaced_service(release.obj("operator-metrics"), ns)
    for account in ("operator", "api", "node-agent", "worker"):
        assert core.read_namespaced_service_account(release.obj(account), ns)
    assert core.read_namespaced_service_account(release.obj("worker"), ml), "worker account in every worker namespace"
    assert rbac.read_namespaced_role(release.obj("worker"), ml)
    assert rbac.read_namespaced_role(release.obj("api"), ml), "the facade's Role lives with its InferenceCluster"
    assert rbac.read_cluster_role(release.obj("operator"))
    assert rbac.read_cluster_role(release.obj("node-agent"))
    assert client.PolicyV1Api(kube.api).read_namespaced_pod_disruption_budget(release.obj("operator"), ns)
    secret = core.read_namespaced_secret(release.obj("api-token"), ns)
    assert len(base64.b64decode(secret.data["token"]).decode()) == 43
    for crd in ("inferenceclusters.legacygpu.io", "inferencetasks.legacygpu.io"):
        assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd) is not None


def test_controllers_create_the_operator_and_node_agent_pods(kube: Kube, release: Release) -> None:
    ns = release.namespace

    def pods(component: str) -> list[Any]:
        sel = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component={component}"
        return list(kube.core.list_namespaced_pod(ns, label_selector=sel).items)

    operators = kube.wait_for(lambda: (p := pods("operator")) and len(p) == 2 and p, timeout=60,
                              what="2 operator pods")  # fmt: skip
    assert {p.spec.service_account_name for p in operators} == {release.obj("operator")}
    facade = kube.wait_for(lambda: pods("api"), timeout=60, what="the facade pod")
    env = {e.name: e for e in facade[0].spec.containers[0].env}
    assert env["LEGACYGPU_API_TOKEN"].value_from.secret_key_ref.name == release.obj("api-token")

    gpu_nodes = kube.core.list_node(label_selector="legacygpu.io/gpu.present=true").items
    if not gpu_nodes:
        pytest.skip("no node labelled legacygpu.io/gpu.present=true on this cluster")

    def scheduled() -> Any:
        ds = kube.apps.read_namespaced_daemon_set(release.obj("node-agent"), ns)
        st = ds.status
        return st if st.desired_number_scheduled == len(gpu_nodes) == st.current_number_scheduled else None

    kube.wait_for(scheduled, timeout=60, what="a node agent on every GPU node")
    agents = kube.wait_for(lambda: len(p := pods("node-agent")) == len(gpu_nodes) and p, timeout=60,
                           what="node agent pods")  # fmt: skip
    assert {p.spec.node_name for p in agents} == {n.metadata.name for n in gpu_nodes}


def _can(kube: Kube, token: str, verb: str, resource: str, group: str = "", namespace: str | None = None,
         subresource: str | None = None) -> bool:  # fmt: skip
    api = kube.client_for_token(token)
    try:
        attrs = {"verb": verb, "group": group, "resource": resource}
        if namespace:
            attrs["namespace"] = namespace
        if subresource:
            attrs["subresource"] = subresource
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}  # fmt: skip
        review = client.AuthorizationV1Api(api).create_self_subject_access_review(body)
        return bool(review.status.allowed)
    finally:
        api.close()


def _expand(rules: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str]]:
    out = []
    for rule in rules:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                resource, _, sub = res.partition("/")
                out += [(group, resource, sub or None, verb) for verb in rule["verbs"]]
    return out


def test_each_service_account_may_do_its_job_and_no_more(kube: Kube, release: Release) -> None:
    ns, ml = release.namespace, release.ml
    operator = kube.token(ns, release.obj("operator"))
    for group, resource, sub, verb in _expand(OPERATOR_RULES):
        namespace = None if resource in ("namespaces", "customresourcedefinitions") else ml
        assert _can(kube, operator, verb, resource, group, namespace, sub), ("operator", verb, resource, sub)
    for group, resource, sub, verb in _expand(LEASE_RULES):
        assert _can(kube, operator, verb, resource, group, ns, sub), ("operator", verb, resource)
        assert not _can(kube, operator, verb, resource, group, ml, sub), "the Lease Role is the release namespace's"
    assert not _can(kube, operator, "get", "secrets", namespace=ml)
    assert not _can(kube, operator, "delete", "inferenceclusters", "legacygpu.io", ml)
    assert not _can(kube, operator, "patch", "nodes")

    worker = kube.token(ml, release.obj("worker"))
    for group, resource, sub, verb in _expand(WORKER_RULES):
        assert _can(kube, worker, verb, resource, group, ml, sub), ("worker", verb, resource, sub)
        assert not _can(kube, worker, verb, resource, group, ns, sub), "a worker's Role is its own namespace's"
    assert not _can(kube, worker, "create", "pods", namespace=ml)
    assert not _can(kube, worker, "get", "inferenceclusters", "legacygpu.io", ml)
    assert not _can(kube, worker, "create", "inferencetasks", "legacygpu.io", ml)

    facade = kube.token(ns, release.obj("api"))
    for verb in ("get", "list", "watch", "create", "patch"):
        assert _can(kube, facade, verb, "inferencetasks", "legacygpu.io", ml), verb
    assert _can(kube, facade, "get", "inferenceclusters", "legacygpu.io", ml)
    assert _can(kube, facade, "patch", "pods", namespace=ml)
    assert _can(kube, facade, "get", "configmaps", namespace=ml)
    assert not _can(kube, facade, "delete", "inferencetasks", "legacygpu.io", ml)
    assert not _can(kube, facade, "patch", "inferencetasks", "legacygpu.io", ml, "status")
    assert not _can(kube, facade, "create", "inferencetasks", "legacygpu.io", ns), "only its cluster's namespace"
    assert not _can(kube, facade, "get", "secrets", namespace=ns)

    agent = kube.token(ns, release.obj("node-agent"))
    assert _can(kube, agent, "patch", "nodes") and _can(kube, agent, "get", "nodes")
    assert not _can(kube, agent, "list", "nodes")
    assert not _can(kube, agent, "list", "pods", namespace=ns)
    assert not _can(kube, agent, "delete", "nodes")


def test_restricted_pod_security_admits_operator_and_facade_but_not_the_node_agent(
    kube: Kube, release: Release
) -> None:
    with kube.namespace("chart-restricted") as restricted:
        kube.core.patch_namespace(restricted, {"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
        }}})  # fmt: skip
        templates = {
            "operator": kube.apps.read_namespaced_deployment(release.obj("operator"), release.namespace),
            "api": kube.apps.read_namespaced_deployment(release.obj("api"), release.namespace),
            "node-agent": kube.apps.read_namespaced_daemon_set(release.obj("node-agent"), release.namespace),
        }
        verdicts = {}
        for component, workload in templates.items():
            pod = kube.api.sanitize_for_serialization(workload.spec.template)
            pod["spec"]["serviceAccountName"] = "default"  # the chart's accounts live in the release namespace
            pod["spec"].pop("priorityClassName", None)
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": f"{component}-"},
                    "spec": pod["spec"]}  # fmt: skip
            try:
                kube.core.create_namespaced_pod(restricted, body, dry_run="All")
                verdicts[component] = "admitted"
            except ApiException as exc:
                assert exc.status == 403, exc.body
                verdicts[component] = exc.body
        assert verdicts["operator"] == "admitted"
        assert verdicts["api"] == "admitted"
        refusal = verdicts["node-agent"]
        assert "violates PodSecurity" in refusal and "hostPath" in refusal and "privileged" in refusal


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _container(kube: Kube, release: Release, component: str) -> dict[str, Any]:
    dep = kube.apps.read_namespaced_deployment(release.obj(component), release.namespace)
    spec = kube.api.sanitize_for_serialization(dep.spec.template.spec)
    return spec["containers"][0]  # type: ignore[no-any-return]


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_operator_and_facade_work_with_the_chart_configuration_and_accounts(
    simulated_kube: Kube, release: Release, worker_command: Callable[[str], None], tmp_path: Path
) -> None:
    kube = simulated_kube
    worker_command(SLEEPER)
    ns, ml = release.namespace, release.ml

    # The operator: the Deployment's arguments and environment, its ServiceAccount's token.
    op = _container(kube, release, "operator")
    op_conf = kube.kubeconfig_for_token(kube.token(ns, release.obj("operator")), tmp_path / "operator.kubeconfig", ns)
    op_env = {**_literal_env(op), "POD_NAME": "chart-e2e-operator", "KUBECONFIG": str(op_conf)}
    argv = [str(LEGACYGPU), *op["args"], "--metrics-port=0"]  # the last --metrics-port wins
    with _process(argv, op_env, tmp_path / "operator.log") as operator:
        cluster = {"apiVersion": "legacygpu.io/v1alpha1", "kind": "InferenceCluster",
                   "metadata": {"name": "digits", "namespace": ml},
                   "spec": {"replicas": 1, "gpusPerWorker": 0, "backend": "onnxruntime"}}  # fmt: skip
        kube.apply(cluster)

        def worker_pods() -> list[Any]:
            if operator.poll() is not None:
                log = (tmp_path / "operator.log").read_text()
                raise AssertionError(f"operator exited {operator.returncode}: {log}")
            return list(kube.core.list_namespaced_pod(ml, label_selector="app.kubernetes.io/component=worker").items)

        (pod,) = kube.wait_for(worker_pods, timeout=90, what="the operator's worker pod")
        assert pod.spec.service_account_name == release.obj("worker"), "workers run as the chart's worker account"
        assert pod.spec.containers[0].image == "legacygpu/worker:0.1.0"
        lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(release.obj("operator"), ns)
        assert lease.spec.holder_identity == "chart-e2e-operator"

        # The facade: the Deployment's arguments and environment, the chart's token, its ServiceAccount.
        api = _container(kube, release, "api")
        secret = kube.core.read_namespaced_secret(release.obj("api-token"), ns)
        token = base64.b64decode(secret.data["token"]).decode()
        api_conf = kube.kubeconfig_for_token(kube.token(ns, release.obj("api")), tmp_path / "api.kubeconfig", ml)
        port = _free_port()
        api_env = {**_literal_env(api), "LEGACYGPU_API_TOKEN": token, "KUBECONFIG": str(api_conf),
                   "LEGACYGPU_DATA_DIR": str(tmp_path / "api-data")}  # fmt: skip
        argv = [str(LEGACYGPU), *api["args"], "--host=127.0.0.1", f"--port={port}"]
        with _process(argv, api_env, tmp_path / "api.log") as facade:
            base = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                if facade.poll() is not None:
                    raise AssertionError(f"facade exited {facade.returncode}: {(tmp_path / 'api.log').read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(f"{base}/cluster/health", timeout=2).status_code == 200
                return False

            kube.wait_for(healthy, timeout=60, interval=0.5, what="the facade's /cluster/health")
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.get("/cluster/tasks").status_code == 401, "the chart's token is required"
                auth = {"Authorization": f"Bearer {token}"}
                tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0, 3.0]}
                answer = http.post("/cluster/tasks/submit", headers=auth,
                                   json={"model": "digits", "inputs": [tensor], "timeout_seconds": 60})  # fmt: skip
                assert answer.status_code == 201, answer.text
                task_id = answer.json()["id"]
                stored = kube.get("legacygpu.io/v1alpha1", "InferenceTask", task_id, ml)
                assert stored is not None and stored["spec"]["clusterRef"] == "digits"
                assert http.get(f"/cluster/tasks/{task_id}", headers=auth).status_code == 200
                workers = kube.wait_for(lambda: http.get("/cluster/workers", headers=auth).json()["data"],
                                        timeout=30, what="the facade to list the worker pod")  # fmt: skip
                assert [w["id"] for w in workers] == [pod.metadata.name]
                cancel = http.post(f"/cluster/tasks/{task_id}/cancel", headers=auth)
                assert cancel.status_code == 200, cancel.text
                assert kube.get("legacygpu.io/v1alpha1", "InferenceTask", task_id, ml)["spec"].get("cancel") is True
        kube.delete(cluster)
        kube.wait_for(lambda: not worker_pods(), timeout=60, what="the worker pod to go with its cluster")


def test_upgrade_keeps_the_generated_token(kube: Kube, release: Release) -> None:
    before = kube.core.read_namespaced_secret(release.obj("api-token"), release.namespace).data["token"]
    path = _values_file({**release.values, "api": {**release.values["api"], "replicas": 2}})
    try:
        _helm(kube, "upgrade", release.name, str(CHART), "--namespace", release.namespace, "-f", path)
    finally:
        os.unlink(path)
    after = kube.core.read_namespaced_secret(release.obj("api-token"), release.namespace).data["token"]
    assert after == before, "helm upgrade must not rotate the generated API token"
    assert kube.apps.read_namespaced_deployment(release.obj("api"), release.namespace).spec.replicas == 2


def _release_objects(kube: Kube, release: Release) -> list[str]:
    """Every object of the release left in its two namespaces or cluster-wide, as ``Kind/namespace/name``."""
    selector = f"app.kubernetes.io/instance={release.name}"
    coordination, policy = client.CoordinationV1Api(kube.api), client.PolicyV1Api(kube.api)
    listers: dict[str, Callable[..., Any]] = {
        "Pod": kube.core.list_namespaced_pod, "Service": kube.core.list_namespaced_service,
        "ServiceAccount": kube.core.list_namespaced_service_account, "Secret": kube.core.list_namespaced_secret,
        "ConfigMap": kube.core.list_namespaced_config_map, "Deployment": kube.apps.list_namespaced_deployment,
        "DaemonSet": kube.apps.list_namespaced_daemon_set, "Role": kube.rbac.list_namespaced_role,
        "RoleBinding": kube.rbac.list_namespaced_role_binding, "Lease": coordination.list_namespaced_lease,
        "PodDisruptionBudget": policy.list_namespaced_pod_disruption_budget,
    }
    found = [f"{kind}/{ns}/{item.metadata.name}" for kind, lister in listers.items()
             for ns in (release.namespace, release.ml) for item in lister(ns, label_selector=selector).items]
    for kind, lister in (("ClusterRole", kube.rbac.list_cluster_role),
                         ("ClusterRoleBinding", kube.rbac.list_cluster_role_binding)):
        found += [f"{kind}/{item.metadata.name}" for item in lister(label_selector=selector).items]
    return found


def test_uninstall_removes_the_release_but_keeps_the_crds(kube: Kube, release: Release) -> None:
    before = _release_objects(kube, release)
    assert f"Lease/{release.namespace}/{release.obj('operator')}" in before  # held by the operator earlier
    _helm(kube, "uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "60s")
    # Pods of the Deployments and the DaemonSet go through the garbage collector after helm returns.
    with contextlib.suppress(Exception):
        kube.wait_for(lambda: not _release_objects(kube, release), timeout=90, what="the release's objects gone")
    assert _release_objects(kube, release) == [], "helm uninstall left objects of the release behind"
    with pytest.raises(ApiException) as lease_gone:
        client.CoordinationV1Api(kube.api).read_namespaced_lease(release.obj("operator"), release.namespace)
    assert lease_gone.value.status == 404
    for name in (release.obj("operator"), release.obj("node-agent")):
        with pytest.raises(ApiException) as gone:
            kube.rbac.read_cluster_role(name)
        assert gone.value.status == 404
    with pytest.raises(ApiException):
        kube.apps.read_namespaced_deployment(release.obj("operator"), release.namespace)
    with pytest.raises(ApiException):
        kube.rbac.read_namespaced_role(release.obj("worker"), release.ml)
    # helm never deletes crds/ (they would take every InferenceTask with them).
    assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "inferencetasks.legacygpu.io")
