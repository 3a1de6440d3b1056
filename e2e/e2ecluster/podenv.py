"""What a simulated pod's local process sees: argv, environment and credentials.

Design: a kubelet gives a container its command and args, its resolved ``env`` and
``envFrom``, a projected service-account token and the in-cluster API address. The
simulator does the same for a local process:

- ``env`` literals, ``$(VAR)`` references, ``fieldRef`` (name, namespace, uid, node,
  service account, pod/host IP, labels, annotations), ``resourceFieldRef`` on limits and
  requests, ``secretKeyRef``/``configMapKeyRef`` and ``envFrom`` read through the API;
- a bound token from the TokenRequest API for the pod's ServiceAccount (it dies with
  the pod), written like the kubelet's mount (``serviceaccount/{token,ca.crt,namespace}``
  in the pod's directory) and as a token ``kubeconfig`` (``$KUBECONFIG``), so the process
  is authenticated as its ServiceAccount and RBAC applies to it;
- ``POD_NAME``, ``POD_NAMESPACE``, ``POD_UID``, ``POD_IP``, ``NODE_NAME``,
  ``KUBERNETES_SERVICE_HOST``/``PORT`` and the assigned GPUs (in
  ``LEGACYGPU_VISIBLE_DEVICES`` by default) are always set. Like the node agent's
  ``Allocate``, the variable holds comma-separated PCI addresses in sysfs form; the
  simulated cards have fake ones, :func:`fake_pci_address` (domain ``00e2``, which
  ordinary hosts do not use, so they name no real card and a worker falls back to its
  usual choice). The ``{gpus}`` placeholder below keeps the node-local GPU indices.

The argv comes from a template (``{command}`` = the container's command + args,
shell-quoted; also ``{pod_name}``, ``{namespace}``, ``{uid}``, ``{node_name}``,
``{pod_ip}``, ``{pod_dir}``, ``{kubeconfig}``, ``{gpus}``), split with :func:`shlex.split`.
The process inherits the simulator's environment (it is a local process, not a
container), with the pod's variables on top.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = ["PodContext", "build_env", "expand", "fake_pci_address", "field_value", "pod_env", "render_argv",
           "write_credentials"]

_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

# PCI domain of the simulated cards: in the sysfs format the node agent puts in
# LEGACYGPU_VISIBLE_DEVICES, but in a domain ordinary hosts do not use for their GPUs.
FAKE_PCI_DOMAIN = 0x00E2


def fake_pci_address(gpu: int) -> str:
    """The PCI address of a simulated node's GPU ``gpu``, as sysfs spells one (``00e2:03:00.0``)."""
    return f"{FAKE_PCI_DOMAIN:04x}:{gpu + 3:02x}:00.0"


@dataclass
class PodContext:
    """What the simulator knows about one pod's placement."""

    pod: dict[str, Any]
    pod_ip: str
    host_ip: str
    pod_dir: Path
    gpu_ids: list[int]
    server: str
    ca_cert: Path
    gpu_env: str = "LEGACYGPU_VISIBLE_DEVICES"
    node_root: Path | None = None  # the node's simulated host file system (e2ecluster.nodefs), for hostPath
    volumes_root: Path | None = None  # the provisioner's claim folders (e2ecluster.provisioner)

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def kubeconfig(self) -> Path:
        return self.pod_dir / "kubeconfig"

    @property
    def gpu_addresses(self) -> str:
        """The pod's GPUs as the node agent's ``Allocate`` names them: comma-separated PCI addresses."""
        return ",".join(fake_pci_address(i) for i in self.gpu_ids)


def expand(value: str, env: dict[str, str]) -> str:
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def field_value(ctx: PodContext, path: str) -> str:
    meta, spec = ctx.pod["metadata"], ctx.pod["spec"]
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    return ""


def _resource(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, name = str(ref.get("resource", "")).partition(".")
    return str((container.get("resources", {}).get(kind) or {}).get(name, "0"))


def _key(core: client.CoreV1Api, namespace: str, kind: str, ref: dict[str, Any]) -> str | None:
    try:
        if kind == "secret":
            data = core.read_namespaced_secret(ref["name"], namespace).data or {}
            raw = data.get(ref["key"])
            return base64.b64decode(raw).decode() if raw is not None else None
        return (core.read_namespaced_config_map(ref["name"], namespace).data or {}).get(ref["key"])
    except ApiException as exc:
        if exc.status == 404 and ref.get("optional"):
            return None
        raise


def _env_from(core: client.CoreV1Api, namespace: str, source: dict[str, Any]) -> dict[str, str]:
    prefix = source.get("prefix", "")
    for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
        ref = source.get(key)
        if not ref:
            continue
        try:
            if kind == "secret":
                raw = core.read_namespaced_secret(ref["name"], namespace).data or {}
                return {prefix + k: base64.b64decode(v).decode() for k, v in raw.items()}
            data = core.read_namespaced_config_map(ref["name"], namespace).data or {}
            return {prefix + k: v for k, v in data.items()}
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            raise
    return {}


def build_env(core: client.CoreV1Api, ctx: PodContext, container: dict[str, Any]) -> dict[str, str]:
    """The environment of the pod's local process: the simulator's, then the pod's on top."""
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/bin:/bin")])
    env.update(pod_env(core, ctx, container))
    return env


def pod_env(core: client.CoreV1Api, ctx: PodContext, container: dict[str, Any]) -> dict[str, str]:
    """The pod's own variables (what a container from an image gets on top of the image's)."""
    host, _, port = ctx.server.removeprefix("https://").partition(":")
    values: dict[str, str] = {
        "POD_NAME": ctx.name,
        "POD_NAMESPACE": ctx.namespace,
        "POD_UID": str(ctx.pod["metadata"].get("uid", "")),
        "POD_IP": ctx.pod_ip,
        "NODE_NAME": str(ctx.pod["spec"].get("nodeName", "")),
        "HOSTNAME": ctx.name,
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBECONFIG": str(ctx.kubeconfig),
        "E2E_POD_DIR": str(ctx.pod_dir),
        ctx.gpu_env: ctx.gpu_addresses,
    }
    for source in container.get("envFrom") or []:
        values.update(_env_from(core, ctx.namespace, source))
    for item in container.get("env") or []:
        value: str | None
        if "value" in item:
            value = expand(str(item["value"]), values)
        else:
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                value = field_value(ctx, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                value = _resource(container, source["resourceFieldRef"])
            elif "secretKeyRef" in source:
                value = _key(core, ctx.namespace, "secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = _key(core, ctx.namespace, "configmap", source["configMapKeyRef"])
            else:
                value = ""
        if value is not None:
            values[item["name"]] = value
    return values


def render_argv(template: str, ctx: PodContext, container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The process argv: ``template`` with the pod's placeholders filled in."""
    words = [expand(str(w), env) for w in [*(container.get("command") or []), *(container.get("args") or [])]]
    values = {
        "command": shlex.join(words),
        "pod_name": ctx.name,
        "namespace": ctx.namespace,
        "uid": str(ctx.pod["metadata"].get("uid", "")),
        "node_name": str(ctx.pod["spec"].get("nodeName", "")),
        "pod_ip": ctx.pod_ip,
        "pod_dir": str(ctx.pod_dir),
        "kubeconfig": str(ctx.kubeconfig),
        "gpus": ",".join(str(i) for i in ctx.gpu_ids),
    }
    return shlex.split(template.strip().format_map(values))


def write_credentials(core: client.CoreV1Api, ctx: PodContext) -> None:
    """Write the pod's service-account token, CA and namespace, and a token kubeconfig."""
    sa_dir = ctx.pod_dir / "serviceaccount"
    sa_dir.mkdir(parents=True, exist_ok=True)
    (sa_dir / "ca.crt").write_bytes(ctx.ca_cert.read_bytes())
    (sa_dir / "namespace").write_text(ctx.namespace)
    user: dict[str, str] = {}
    if ctx.pod["spec"].get("automountServiceAccountToken", True):
        meta = ctx.pod["metadata"]
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            },
        }
        account = ctx.pod["spec"].get("serviceAccountName") or "default"
        answer = core.create_namespaced_service_account_token(account, ctx.namespace, request)
        (sa_dir / "token").write_text(answer.status.token)
        (sa_dir / "token").chmod(0o600)
        user = {"token": answer.status.token}
    cluster = {"server": ctx.server, "certificate-authority": str(sa_dir / "ca.crt")}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "pod", "user": user}],
        "contexts": [{"name": "pod", "context": {"cluster": "e2e", "user": "pod", "namespace": ctx.namespace}}],
        "current-context": "pod",
    }
    ctx.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
    ctx.kubeconfig.chmod(0o600)
