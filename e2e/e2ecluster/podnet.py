"""The network a pod run from an image sees on the stand-in: its own address, and Service names.

Design: buildah's chroot isolation shares the host's network namespace, where a kubelet gives
every pod a namespace of its own. Two things a chart's pods rely on are missing then, and this
module supplies both for :mod:`e2ecluster.podimage`:

- **Listening on all addresses.** Two pods binding ``0.0.0.0:8080`` (two operator replicas), or
  the facade and a worker both on ``:8000``, would collide. :func:`shim` compiles ``podnet.c``
  (once, with the host's C compiler, under ``.cache/images/podnet``) into a library that
  :func:`preload` binds into the container and preloads (``LD_PRELOAD``): its ``bind()`` turns a
  wildcard address into the pod's loopback IP (``E2E_POD_IP``), which is where probes, Services
  and other pods reach it. Binds to a given address are left alone.
- **Service names.** There is no cluster DNS. :func:`service_hosts` maps every Service that
  selects a ready pod to that pod's IP, under the names a pod's resolver would accept
  (``svc``, in the pod's namespace, ``svc.ns``, ``svc.ns.svc``, ``svc.ns.svc.cluster.local``);
  :class:`~e2ecluster.images.Buildah` writes them into the container's ``/etc/hosts``. A Service
  name thus reaches one ready pod, at the pod's own port: it works for Services whose
  ``port`` is their ``targetPort`` (the chart's are), and is read when the container starts.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from e2ecluster.images import IMAGES_DIR, ImageError

__all__ = ["CONTAINER_DIR", "preload", "service_hosts", "shim"]

SOURCE = Path(__file__).with_name("podnet.c")
CONTAINER_DIR = "/e2e-podnet"
"""Where the shim's folder is bound in the container."""
LIBRARY = "libpodnet.so"


def shim(root: Path = IMAGES_DIR) -> Path:
    """The folder holding the compiled shim (:data:`LIBRARY`), compiled if the source changed."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    folder = root / "podnet" / digest
    library = folder / LIBRARY
    if library.exists():
        return folder
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ImageError("no C compiler (cc) to build the pod network shim e2e/e2ecluster/podnet.c (apt: gcc)")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{LIBRARY}.partial"
    out = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(SOURCE)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        raise ImageError(f"compiling {SOURCE.name} failed: {out.stderr.strip()[-2000:]}")
    partial.chmod(0o755)
    partial.replace(library)
    folder.chmod(0o755)
    return folder


def preload(pod_ip: str, root: Path = IMAGES_DIR) -> tuple[dict[str, str], tuple[str, str]]:
    """The variables that preload the shim for a pod at ``pod_ip``, and its (container path, host folder) bind."""
    env = {"LD_PRELOAD": f"{CONTAINER_DIR}/{LIBRARY}", "E2E_POD_IP": pod_ip}
    return env, (CONTAINER_DIR, str(shim(root)))


def service_hosts(services: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]], namespace: str) -> dict[str, str]:
    """Host name -> IP of one ready pod the Service selects, per Service (Services and pods as API dicts).

    What the EndpointSlice controller would publish, computed here: the API server refuses
    loopback addresses in EndpointSlices, and the stand-in's pod IPs are loopback ones. ``namespace``
    is the pod's: there a Service's bare name resolves too.
    """
    ready: dict[str, list[tuple[dict[str, str], str]]] = {}
    for pod in pods:
        status, meta = pod.get("status") or {}, pod.get("metadata") or {}
        if status.get("podIP") and any(c.get("type") == "Ready" and c.get("status") == "True"
                                       for c in status.get("conditions") or []):  # fmt: skip
            ready.setdefault(meta.get("namespace", ""), []).append((meta.get("labels") or {}, status["podIP"]))
    hosts: dict[str, str] = {}
    for service in services:
        meta, selector = service.get("metadata") or {}, (service.get("spec") or {}).get("selector") or {}
        name, ns = meta.get("name", ""), meta.get("namespace", "")
        ips = sorted(ip for labels, ip in ready.get(ns, []) if selector and selector.items() <= labels.items())
        if not ips:
            continue
        names = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        if ns == namespace:
            names.append(name)
        for host in names:
            hosts[host] = ips[0]
    return hosts
