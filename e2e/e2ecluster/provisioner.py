"""A folder provisioner for PersistentVolumeClaims: each claim gets a folder of its own.

Design: the stand-in control plane has no storage. Like a real external provisioner, the
simulator (a thread beside its pod loop) watches for claims that need a volume and makes one:
for each PersistentVolumeClaim that is ``Pending`` with no ``spec.volumeName``, it creates a
folder ``<state>/volumes/<pv name>`` and a PersistentVolume ``e2e-<claim uid>``
(``hostPath`` on that folder, the claim's access modes, requested size and storage class, and a
``claimRef`` to the claim). The real PV controller of kube-controller-manager then binds the
pre-bound pair (the claim's ``volumeName``, both ``Bound``), and the scheduler, which holds back
pods with unbound claims, places the pod.

When a claim is deleted its volume is ``Released``; the provisioner then deletes the volume
and its folder (``Retain`` is the policy the PV controller sees, so it never tries a deleter of
its own). :func:`claim_folder` is the kubelet's half: the folder a pod's
``persistentVolumeClaim`` volume is bound from, refused unless the claim is bound to a volume
this provisioner made inside its own folder (a pod never gets a folder of the machine).
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = ["LABEL", "Provisioner", "claim_folder", "volumes_root"]

log = logging.getLogger(__name__)

LABEL = "e2e.legacygpu.io/provisioned"
"""On the PersistentVolumes this provisioner made."""


def volumes_root(state_root: Path) -> Path:
    """Where the claims' folders are, under the control plane's state folder."""
    return state_root / "volumes"


def claim_folder(core: client.CoreV1Api, namespace: str, claim: str, root: Path) -> Path:
    """The folder bound to ``claim``; ValueError when it is not bound (yet) or not to one of ours."""
    try:
        pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ValueError(f"persistentVolumeClaim {claim!r} not found") from exc
        raise
    if pvc.status is None or pvc.status.phase != "Bound" or not pvc.spec.volume_name:
        raise ValueError(f"persistentVolumeClaim {claim!r} is not bound yet")
    volume = core.read_persistent_volume(pvc.spec.volume_name)
    path = Path(volume.spec.host_path.path if volume.spec.host_path else "")
    if (volume.metadata.labels or {}).get(LABEL) != "true" or path.parent != root or not path.is_dir():
        raise ValueError(f"persistentVolumeClaim {claim!r} is bound to {pvc.spec.volume_name}, which the "
                         "stand-in's provisioner did not make (only its folders are mounted)")
    return path


class Provisioner:
    """Gives each pending claim a folder and a pre-bound PersistentVolume; cleans up released ones."""

    def __init__(self, core: client.CoreV1Api, root: Path, stopping: threading.Event, *, every: float = 0.5) -> None:
        self.core, self.root, self.stopping, self.every = core, root, stopping, every

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("provisioner pass failed")
            self.stopping.wait(self.every)

    def sync(self) -> None:
        """One pass: provision pending claims, delete released volumes."""
        for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if not pvc.spec.volume_name and (pvc.status is None or pvc.status.phase in (None, "Pending")):
                self._provision(pvc)
        for volume in self.core.list_persistent_volume(label_selector=f"{LABEL}=true").items:
            if volume.status is not None and volume.status.phase in ("Released", "Failed"):
                self._delete(volume)

    def _provision(self, pvc: Any) -> None:
        meta, spec = pvc.metadata, pvc.spec
        name = f"e2e-{meta.uid}"
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        size = ((spec.resources.requests or {}) if spec.resources else {}).get("storage", "1Gi")
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {LABEL: "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": list(spec.access_modes or ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": spec.storage_class_name or "",
                "volumeMode": spec.volume_mode or "Filesystem",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta.namespace,
                             "name": meta.name, "uid": meta.uid},
            },
        }
        try:
            self.core.create_persistent_volume(volume)
            log.info("claim %s/%s: volume %s at %s", meta.namespace, meta.name, name, folder)
        except ApiException as exc:
            if exc.status != 409:  # 409: made on an earlier pass, waiting for the PV controller
                raise

    def _delete(self, volume: Any) -> None:
        name = volume.metadata.name
        path = Path(volume.spec.host_path.path) if volume.spec.host_path else None
        try:
            self.core.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        if path is not None and path.parent == self.root:
            shutil.rmtree(path, ignore_errors=True)
        log.info("volume %s released: deleted with its folder", name)
