"""Client-side helpers the e2e tests share: apply manifests, wait, tokens, namespaces.

Design: :class:`Kube` wraps one kubeconfig (the e2e cluster's admin, or the user's
cluster via ``E2E_KUBECONFIG``) and offers what an operator/CRD test needs without
kubectl: server-side apply of YAML (files, strings or dicts, CRDs included, with a
discovery refresh once a CRD is established), deletion, polling waits that fail with
the last state seen, throwaway namespaces (waiting for their ``default``
ServiceAccount, without which pods are refused), ServiceAccount tokens from the
TokenRequest API and API clients authenticated with them (so RBAC is really
exercised), and, when the cluster is the local simulated one, access to the node
simulator (worker command template, per-pod process ids and logs).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config, dynamic
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from e2ecluster import procs, provisioner
from e2ecluster.cluster import Cluster
from e2ecluster.errors import ClusterError, WaitTimeout

__all__ = ["Kube", "load_manifests"]

T = TypeVar("T")
FIELD_MANAGER = "legacygpu-e2e"


def load_manifests(source: str | Path | dict[str, Any] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents from a path, a YAML string, a dict or a list of dicts (``List`` kinds flattened)."""
    if isinstance(source, dict):
        docs: list[Any] = [source]
    elif isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).is_file()):
        docs = list(yaml.safe_load_all(Path(source).read_text()))
    elif isinstance(source, str):
        docs = list(yaml.safe_load_all(source))
    else:
        docs = list(source)
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not doc:
            continue
        if str(doc.get("kind", "")).endswith("List") and "items" in doc:
            out.extend(load_manifests(doc["items"]))
        else:
            out.append(doc)
    return out


class Kube:
    """An API connection for tests, plus the simulator's side when there is one."""

    def __init__(self, kubeconfig: Path, cluster: Cluster | None = None) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.cluster = cluster
        self.api: client.ApiClient = config.new_client_from_config(str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self._cache = Path(tempfile.gettempdir()) / f"e2e-discovery-{uuid.uuid4().hex}.json"
        self.dynamic = dynamic.DynamicClient(self.api, cache_file=str(self._cache))

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    @property
    def simulated(self) -> bool:
        """True when this is the local cluster whose nodes the simulator plays."""
        return self.cluster is not None

    def raw_get(self, path: str, query: list[tuple[str, str]] | None = None) -> str:
        """GET a non-resource path (``/readyz``, ``/version``...) with this client's credentials."""
        method, url, headers, body, post = self.api.param_serialize(
            "GET", path, query_params=query or [], auth_settings=["BearerToken"]
        )
        resp = self.api.call_api(method, url, headers, body, post)
        resp.read()
        return bytes(resp.data).decode()

    def close(self) -> None:
        self._cache.unlink(missing_ok=True)
        self.api.close()

    # -- manifests -------------------------------------------------------------------------
    def _resource(self, doc: dict[str, Any]) -> Any:
        try:
            return self.dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        except ResourceNotFoundError:
            self.dynamic.resources.invalidate_cache()  # e.g. a CRD applied a moment ago
            return self.dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])

    def apply(
        self, source: str | Path | dict[str, Any] | Iterable[dict[str, Any]], namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Server-side apply every document (in order); return the objects the server stored.

        CustomResourceDefinitions are waited on until ``Established`` so that later
        documents in the same call may be custom resources of that kind.
        """
        applied: list[dict[str, Any]] = []
        for doc in load_manifests(source):
            resource = self._resource(doc)
            ns = (doc.get("metadata", {}).get("namespace") or namespace) if resource.namespaced else None
            obj = resource.server_side_apply(
                body=doc, namespace=ns, field_manager=FIELD_MANAGER, force_conflicts=True
            ).to_dict()
            if doc["kind"] == "CustomResourceDefinition":
                self.wait_condition(doc["apiVersion"], "CustomResourceDefinition", obj["metadata"]["name"],
                                    "Established")  # fmt: skip
                self.dynamic.resources.invalidate_cache()
            applied.append(obj)
        return applied

    def delete(
        self, source: str | Path | dict[str, Any] | Iterable[dict[str, Any]], namespace: str | None = None
    ) -> None:
        """Delete every document's object (background propagation); missing ones are fine."""
        for doc in reversed(load_manifests(source)):
            resource = self._resource(doc)
            ns = (doc.get("metadata", {}).get("namespace") or namespace) if resource.namespaced else None
            with contextlib.suppress(NotFoundError):
                resource.delete(name=doc["metadata"]["name"], namespace=ns,
                                body={"propagationPolicy": "Background"})  # fmt: skip

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        resource = self._resource({"apiVersion": api_version, "kind": kind})
        try:
            return dict(resource.get(name=name, namespace=namespace).to_dict())
        except NotFoundError:
            return None

    def free_resource(
        self, resource: str = "legacygpu.io/gpu", node_selector: str = "legacygpu.io/gpu.present=true"
    ) -> dict[str, int]:
        """Per selected node: allocatable ``resource`` minus what its non-terminated pods ask for.

        Terminating pods still count, as they do for the scheduler, until they are gone.
        """
        free = {
            n.metadata.name: int((n.status.allocatable or {}).get(resource, "0"))
            for n in self.core.list_node(label_selector=node_selector).items
        }
        for pod in self.core.list_pod_for_all_namespaces().items:
            if pod.spec.node_name in free and pod.status.phase not in ("Succeeded", "Failed"):
                for c in pod.spec.containers:
                    free[pod.spec.node_name] -= int(((c.resources and c.resources.limits) or {}).get(resource, "0"))
        return free

    # -- waiting ---------------------------------------------------------------------------
    def wait_for(
        self, probe: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"
    ) -> T:
        """Call ``probe`` until it returns something truthy; return that, or raise WaitTimeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = probe()
            except ApiException as exc:
                last = f"API error {exc.status}: {exc.reason}"
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
            time.sleep(interval)

    def wait_condition(
        self,
        api_version: str,
        kind: str,
        name: str,
        condition: str,
        *,
        namespace: str | None = None,
        status: str = "True",
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Wait until ``status.conditions[type=condition].status == status``; return the object."""

        def probe() -> dict[str, Any] | None:
            obj = self.get(api_version, kind, name, namespace)
            conds = ((obj or {}).get("status") or {}).get("conditions") or []
            return obj if any(c.get("type") == condition and c.get("status") == status for c in conds) else None

        return self.wait_for(probe, timeout=timeout, what=f"{kind} {name} {condition}={status}")

    def wait_pod_phase(self, namespace: str, name: str, phase: str, *, timeout: float = 60.0) -> client.V1Pod:
        """Wait until the pod reports ``phase``; return it."""

        def probe() -> client.V1Pod | None:
            pod = self.core.read_namespaced_pod(name, namespace)
            return pod if pod.status.phase == phase else None

        return self.wait_for(probe, timeout=timeout, what=f"pod {namespace}/{name} phase {phase}")

    def wait_gone(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
                  timeout: float = 60.0) -> None:  # fmt: skip
        """Wait until the object no longer exists."""
        self.wait_for(lambda: self.get(api_version, kind, name, namespace) is None, timeout=timeout,
                      what=f"{kind} {name} to be deleted")  # fmt: skip

    # -- namespaces and identities ---------------------------------------------------------
    def create_namespace(self, prefix: str = "e2e") -> str:
        """A fresh namespace, returned once its ``default`` ServiceAccount exists."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name, "labels": {"e2e.legacygpu.io/test": "true"}}})
        self.wait_for(lambda: self.core.read_namespaced_service_account("default", name), timeout=60,
                      what=f"ServiceAccount {name}/default")  # fmt: skip
        return name

    @contextlib.contextmanager
    def namespace(self, prefix: str = "e2e") -> Iterator[str]:
        """A namespace for the duration of a ``with`` block, deleted afterwards."""
        name = self.create_namespace(prefix)
        try:
            yield name
        finally:
            with contextlib.suppress(ApiException):
                self.core.delete_namespace(name)

    def token(self, namespace: str, service_account: str, *, seconds: int = 3600) -> str:
        """A token for the ServiceAccount from the TokenRequest API."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds}}  # fmt: skip
        answer = self.core.create_namespaced_service_account_token(service_account, namespace, body)
        return str(answer.status.token)

    def client_for_token(self, token: str) -> client.ApiClient:
        """An API client that authenticates with ``token`` only (no client certificate)."""
        base = self.api.configuration
        conf = client.Configuration()
        conf.host = base.host
        conf.ssl_ca_cert = base.ssl_ca_cert
        conf.verify_ssl = base.verify_ssl
        conf.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(conf)

    def kubeconfig_for_token(self, token: str, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig that authenticates with ``token`` (for a local operator process)."""
        cluster: dict[str, Any] = {"server": self.server}
        ca = self.api.configuration.ssl_ca_cert
        if ca:
            cluster["certificate-authority"] = str(ca)
        else:
            cluster["insecure-skip-tls-verify"] = True
        doc = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "sa", "namespace": namespace}}],
            "current-context": "sa",
        }  # fmt: skip
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
        return path

    # -- the node simulator ----------------------------------------------------------------
    def _need_cluster(self) -> Cluster:
        if self.cluster is None:
            raise ClusterError("this needs the local simulated cluster (not available with E2E_KUBECONFIG)")
        return self.cluster

    def set_worker_command(self, template: str) -> None:
        """Command template for worker pods started from now on (see e2ecluster.podenv)."""
        self._need_cluster().set_worker_command(template)

    def restart_apiserver(self, *, down_seconds: float = 3.0) -> float:
        """Stop and restart kube-apiserver (etcd stays); seconds it was unreachable."""
        return self._need_cluster().restart_apiserver(down_seconds=down_seconds)

    def pod_dir(self, namespace: str, name: str) -> Path:
        """Where the simulator keeps a pod's credentials, process log and pid file."""
        return self._need_cluster().root / "pods" / f"{namespace}_{name}"

    def claim_dir(self, namespace: str, claim: str, *, timeout: float = 60.0) -> Path:
        """The folder the stand-in's provisioner bound ``claim`` to, once the claim is Bound."""

        root = provisioner.volumes_root(self._need_cluster().root)

        def bound() -> Path | None:
            try:  # the provisioner's own check: a folder it made, under its root
                return provisioner.claim_folder(self.core, namespace, claim, root)
            except ValueError as exc:
                if "not bound yet" in str(exc):
                    return None
                raise

        return self.wait_for(bound, timeout=timeout, what=f"claim {namespace}/{claim} bound")

    def worker_pid(self, namespace: str, name: str) -> int | None:
        """The pid of the pod's live worker process, or None."""
        try:
            pid_text, marker = (self.pod_dir(namespace, name) / "pid").read_text().split("\n", 1)
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if procs.is_ours(pid, marker.strip()) else None
