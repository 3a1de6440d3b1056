"""Running a pod's container from its image: what the simulated kubelet hands to buildah.

Design: when the simulator's worker-command template is :data:`IMAGE_TEMPLATE` (``{image}``),
a pod whose first container names an image held in the ``make images`` storage
(``.cache/images``) runs from that image instead of as a local process. A kubelet's work is
then, in order:

- the argv, by Kubernetes' rules: ``command`` replaces the image's ENTRYPOINT and drops its
  CMD; ``args`` alone replace the CMD; ``$(VAR)`` references expanded (:func:`container_argv`);
- the user: ``runAsUser``/``runAsGroup`` of the container's securityContext, else the pod's,
  else the image's USER (:func:`container_user`);
- the environment: the pod's variables only (:func:`podenv.pod_env`: no host variables leak
  in; ``KUBECONFIG`` dropped, so clients use the in-cluster config);
- the volumes (:func:`prepare_volumes`): each ``volumeMount`` bound from a folder under the
  pod's directory: ``emptyDir`` (a folder), ``configMap``/``secret``/``downwardAPI``/
  ``projected`` (files written from the API, with ``items``/``key``/``path``, ``subPath``),
  and the ServiceAccount token, CA and namespace at
  ``/var/run/secrets/kubernetes.io/serviceaccount`` unless automounting is off; a
  ``persistentVolumeClaim`` from the folder the stand-in's provisioner gave the claim
  (:mod:`e2ecluster.provisioner`); ``readOnly`` mounts (and claims) are bound read-only.
  Process pods get the same volumes (:mod:`e2ecluster.podmounts`). ``hostPath`` is bound from
  the node's simulated host file system
  (:mod:`e2ecluster.nodefs`: ``/sys``, ``/dev/dri``, ``/dev/kfd``, the kubelet's device-plugin
  folder), never from the real host; other host paths are refused. buildah's chroot isolation
  binds the machine's ``/dev`` read-only and drops volumes under it, so mounts under ``/dev/``
  are made by a wrapper instead (:func:`dev_wrapper`): ``buildah run`` starts in a private mount
  namespace whose ``/dev`` is an overlay on the machine's (writes go to a tmpfs, so the
  mountpoints are made there, not in the machine's ``/dev``), with the volumes bound onto it;
  buildah's ``/dev`` bind then carries them into the container (:mod:`e2ecluster.podmounts`).

Chroot isolation shares the host's network namespace, so the container reaches the API
server at the loopback address the pod environment names; :mod:`e2ecluster.podnet` turns the
process's binds to all addresses into binds to the pod's loopback IP (where probes reach it)
and writes the Services' names into its ``/etc/hosts``. It does not give a
read-only root: that the images write only to their volumes is proven by tests/images.
"""

from __future__ import annotations

import base64
import contextlib
import shlex
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2ecluster import nodefs, podmounts, podnet, provisioner
from e2ecluster.images import Buildah, ImageError
from e2ecluster.podenv import PodContext, expand, field_value

__all__ = ["CONTAINER_PREFIX", "IMAGE_TEMPLATE", "SERVICE_ACCOUNT_DIR", "container_argv", "container_name",
           "container_user", "describe", "dev_wrapper", "local_image", "prepare_volumes", "remove",
           "run_argv"]  # fmt: skip

IMAGE_TEMPLATE = "{image}"
CONTAINER_PREFIX = "e2e-pod-"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def local_image(buildah: Buildah, image: str) -> str | None:
    """``image`` as a reference held in the buildah storage, or None when it is not there.

    A bare ``name:tag`` is looked up as given and under ``localhost/`` (where buildah files
    images it built); a digest reference must match exactly.
    """
    candidates = [image] if "/" in image.split(":")[0] and "." in image.split("/")[0] else [image, f"localhost/{image}"]
    for ref in candidates:
        if buildah.exists(ref):
            return ref
    return None


def container_argv(container: dict[str, Any], config: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The process argv by Kubernetes' rules on ``command``/``args`` over ENTRYPOINT/CMD."""
    command = container.get("command")
    args = container.get("args")
    if command:
        words = [*command, *(args or [])]
    else:
        words = [*(config.get("Entrypoint") or []), *(args if args is not None else config.get("Cmd") or [])]
    return [expand(str(w), env) for w in words]


def container_user(pod: dict[str, Any], container: dict[str, Any]) -> str | None:
    """``uid[:gid]`` from the securityContexts (container first), or None for the image's USER."""
    pod_ctx = pod["spec"].get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    if uid is None:
        return None
    return f"{uid}:{gid}" if gid is not None else str(uid)


def _write(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)


def _pick(data: dict[str, bytes], items: list[dict[str, Any]] | None, name: str) -> dict[str, bytes]:
    if not items:
        return data
    out = {}
    for item in items:
        if item["key"] not in data:
            raise KeyError(f"{name} has no key {item['key']!r}")
        out[item.get("path") or item["key"]] = data[item["key"]]
    return out


def _source_files(core: client.CoreV1Api, ctx: PodContext, source: dict[str, Any]) -> dict[str, bytes]:
    """The files of one configMap/secret/downwardAPI/serviceAccountToken volume source."""
    ns = ctx.namespace
    if "configMap" in source or "secret" in source:
        kind = "configMap" if "configMap" in source else "secret"
        ref = source[kind]
        name = ref.get("name") or ref.get("secretName")
        try:
            if kind == "secret":
                raw = core.read_namespaced_secret(name, ns).data or {}
                data = {k: base64.b64decode(v) for k, v in raw.items()}
            else:
                configmap = core.read_namespaced_config_map(name, ns)
                data = {k: v.encode() for k, v in (configmap.data or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (configmap.binary_data or {}).items()})
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                return {}
            raise
        return _pick(data, ref.get("items"), f"{kind} {name}")
    if "downwardAPI" in source:
        return {item["path"]: field_value(ctx, item["fieldRef"]["fieldPath"]).encode()
                for item in source["downwardAPI"].get("items") or [] if "fieldRef" in item}  # fmt: skip
    if "serviceAccountToken" in source:
        token = (ctx.pod_dir / "serviceaccount" / "token").read_bytes()
        return {source["serviceAccountToken"].get("path", "token"): token}
    return {}


def prepare_volumes(
    core: client.CoreV1Api, ctx: PodContext, container: dict[str, Any], *, service_account: bool = True
) -> tuple[dict[str, str], set[str]]:
    """Write the container's volumes under ``<pod_dir>/volumes``; (container path -> host path, read-only paths).

    A ``persistentVolumeClaim`` is bound from the folder the stand-in's provisioner gave the claim
    (:mod:`e2ecluster.provisioner`). ``service_account=False`` leaves out the token mount (process
    pods read their token through ``$KUBECONFIG``).
    """
    spec = ctx.pod["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    root = ctx.pod_dir / "volumes"
    binds: dict[str, str] = {}
    read_only: set[str] = set()
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise KeyError(f"volumeMount {mount['name']!r} names no volume of the pod")
        folder = root / mount["name"]
        if "hostPath" in volume:
            if ctx.node_root is None:
                raise ValueError(f"volume {mount['name']!r}: hostPath needs a simulated node file system")
            folder = nodefs.host_path(ctx.node_root, volume["hostPath"])
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            if ctx.volumes_root is None:
                raise ValueError(f"volume {mount['name']!r}: persistentVolumeClaim needs the provisioner's folder")
            folder = provisioner.claim_folder(core, ctx.namespace, claim["claimName"], ctx.volumes_root)
            if claim.get("readOnly"):
                read_only.add(mount["mountPath"])
        elif "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o1777)
        elif "projected" in volume:
            files: dict[str, bytes] = {}
            for source in volume["projected"].get("sources") or []:
                files.update(_source_files(core, ctx, source))
            _write(folder, files)
            read_only.add(mount["mountPath"])
        elif any(k in volume for k in ("configMap", "secret", "downwardAPI")):
            _write(folder, _source_files(core, ctx, volume))
            read_only.add(mount["mountPath"])
        else:
            kinds = sorted(set(volume) - {"name"})
            raise ValueError(f"volume {mount['name']!r}: {', '.join(kinds)} is not simulated")
        source = folder / mount["subPath"] if mount.get("subPath") else folder
        binds[mount["mountPath"]] = str(source)
        if mount.get("readOnly"):
            read_only.add(mount["mountPath"])
    automount = container.get("automountServiceAccountToken", spec.get("automountServiceAccountToken", True))
    if service_account and automount and SERVICE_ACCOUNT_DIR not in binds:
        binds[SERVICE_ACCOUNT_DIR] = str(ctx.pod_dir / "serviceaccount")
        read_only.add(SERVICE_ACCOUNT_DIR)
    return binds, read_only


def dev_wrapper(work: Path, binds: dict[str, str], read_only: set[str]) -> list[str]:
    """The argv prefix that runs a command with ``binds`` (targets under ``/dev/``) in its own ``/dev``.

    :func:`e2ecluster.podmounts.mount_wrapper` with ``/dev`` overlaid: the mountpoints created for the
    binds exist only in the command's namespace.
    """
    return podmounts.mount_wrapper(work, binds, read_only, ["/dev"])


def run_argv(
    buildah: Buildah, core: client.CoreV1Api, ctx: PodContext, container: dict[str, Any], env: dict[str, str],
    image: str, name: str,
) -> list[str]:  # fmt: skip
    """Make working container ``name`` from ``image`` and return the ``buildah run`` argv of the pod's process.

    The caller runs the argv and, when the process is gone, removes the container (:func:`remove`).
    """
    config = buildah.config(image)
    argv = container_argv(container, config, env)
    if not argv:
        raise ValueError(f"image {image} has no ENTRYPOINT/CMD and the container no command")
    binds, read_only = prepare_volumes(core, ctx, container)
    under_dev = {t: binds.pop(t) for t in list(binds) if t.startswith("/dev/")}
    net_env, (shim_dir, shim_source) = podnet.preload(ctx.pod_ip, buildah.root)
    binds[shim_dir] = shim_source
    read_only.add(shim_dir)
    as_dicts = core.api_client.sanitize_for_serialization
    services = as_dicts(core.list_service_for_all_namespaces()).get("items") or []
    pods = as_dicts(core.list_pod_for_all_namespaces()).get("items") or []
    hosts = podnet.service_hosts(services, pods, ctx.namespace)
    remove(buildah, name)
    buildah.new_container(image, name, hosts=hosts)
    run = buildah.run_argv(name, argv, user=container_user(ctx.pod, container),
                           workdir=container.get("workingDir") or None, env={**env, **net_env}, volumes=binds,
                           read_only=sorted(read_only))  # fmt: skip
    return [*dev_wrapper(ctx.pod_dir / "dev", under_dev, read_only), *run] if under_dev else run


def container_name(uid: str, restarts: int) -> str:
    """The working container of a pod's run number ``restarts`` (removed when the process ends)."""
    return f"{CONTAINER_PREFIX}{uid[:18]}-{restarts}"


def remove(buildah: Buildah, name: str) -> None:
    """Remove working container ``name`` if it exists."""
    with contextlib.suppress(ImageError):
        buildah.call("rm", name, timeout=120)


def describe(argv: list[str]) -> str:
    """A short log line for a ``buildah run`` argv: what runs, not buildah's flags."""
    return shlex.join(argv[argv.index("--") + 1:]) if "--" in argv else shlex.join(argv)
