"""Volumes of process pods: ConfigMaps, claims and emptyDirs mounted at their mountPath, the machine untouched.

The first tests need no cluster (root and unshare): :mod:`e2ecluster.podmounts` around a shell.
The last runs on the real control plane: a claim is bound by the stand-in's provisioner and the
real PV controller, the scheduler places the pod, and the pod's local process sees its volumes at
their declared paths, in a mount namespace of its own.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2ecluster import Kube
from e2ecluster.podmounts import mount_wrapper, nearest_existing, process_binds

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")

BASE = "/var/lib/legacygpu-e2e-volumes"  # /var/lib exists; this folder must never appear on the machine


def test_process_binds_keep_the_machines_folders_and_overlay_the_nearest_existing_one(tmp_path: Path) -> None:
    binds = {"/tmp": str(tmp_path / "a"), f"{BASE}/cache": str(tmp_path / "b"), f"{BASE}/src/x": str(tmp_path / "c"),
             "/srv": str(tmp_path / "d"), "/srv/new/y": str(tmp_path / "e")}
    kept, overlays, host = process_binds(binds, empty={"/tmp"})
    assert host == ["/tmp"]  # only an emptyDir at an existing path is left as the machine's
    assert set(kept) == {f"{BASE}/cache", f"{BASE}/src/x", "/srv", "/srv/new/y"}  # a claim at /srv is bound over it
    assert overlays == ["/var/lib"] and nearest_existing(f"{BASE}/src/x") == "/var/lib"  # /srv/new/y: in /srv's volume
    assert process_binds({"/tmp": str(tmp_path)})[2] == []  # not an emptyDir: bound over the machine's /tmp
    with pytest.raises(ValueError, match="root of the machine"):
        process_binds({"/no-such-top-folder/x": str(tmp_path)})


@needs_root
def test_mounts_are_made_in_a_private_namespace_and_read_only_ones_refuse_writes(tmp_path: Path) -> None:
    config, claim = tmp_path / "config", tmp_path / "claim"
    config.mkdir()
    claim.mkdir()
    (config / "greeting").write_text("hello")
    binds = {f"{BASE}/config": str(config), f"{BASE}/claim": str(claim)}
    kept, overlays, _ = process_binds(binds)
    argv = mount_wrapper(tmp_path / "mounts", kept, {f"{BASE}/config"}, overlays)
    script = "; ".join([f"cat {BASE}/config/greeting", "echo",
                        f"touch {BASE}/config/x 2>/dev/null && echo writable || echo read-only",
                        f"echo out > {BASE}/claim/written", f"echo stray > {BASE}/stray",
                        "ls /var/lib | grep -c . >/dev/null && echo ok"])
    out = subprocess.run([*argv, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == ["hello", "read-only", "ok"], out
    assert (claim / "written").read_text() == "out\n"  # the bound folder got the write
    assert not Path(BASE).exists(), "the machine's /var/lib was written"
    assert sorted(p.name for p in config.iterdir()) == ["greeting"]


@needs_root
def test_a_volume_at_an_existing_path_is_bound_there_only_for_the_pod(tmp_path: Path) -> None:
    """A claim mounted over a folder the machine has: the pod sees the claim, the machine its own folder."""
    existing = tmp_path / "existing"  # stands for a path the machine has (as /srv)
    existing.mkdir()
    (existing / "machine.txt").write_text("the machine's")
    claim, config = tmp_path / "claim", tmp_path / "config"
    claim.mkdir()
    config.mkdir()
    (config / "greeting").write_text("hello")
    binds = {str(existing): str(claim), f"{existing}/config": str(config)}
    kept, overlays, host = process_binds(binds)
    assert host == [] and overlays == []
    argv = mount_wrapper(tmp_path / "mounts", kept, {f"{existing}/config"}, overlays)
    script = "; ".join([f"ls {existing}", f"echo out > {existing}/written",
                        f"touch {existing}/config/x 2>/dev/null && echo writable || echo read-only"])
    out = subprocess.run([*argv, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == ["config", "read-only"], out  # the claim (with its config mountpoint), not machine.txt
    assert (claim / "written").read_text() == "out\n"
    assert sorted(p.name for p in existing.iterdir()) == ["machine.txt"]  # the machine's folder untouched


@needs_root
def test_a_volume_folder_under_an_overlaid_folder_is_the_machines_not_the_overlays(tmp_path: Path) -> None:
    """The state dir under /var/lib, which a pod's new mountPath overlays: its claim writes reach the claim."""
    state = Path(tempfile.mkdtemp(prefix="legacygpu-e2e-state-", dir="/var/lib"))
    try:
        claim = state / "volumes" / "claim"
        claim.mkdir(parents=True)
        kept, overlays, _ = process_binds({f"{BASE}/claim": str(claim)})
        assert overlays == ["/var/lib"]
        argv = mount_wrapper(state / "mounts", kept, set(), overlays)
        subprocess.run([*argv, "sh", "-c", f"echo out > {BASE}/claim/written"], check=True, timeout=30)
        assert (claim / "written").read_text() == "out\n"  # not lost in the overlay's upper folder
        assert not Path(BASE).exists(), "the machine's /var/lib was written"
    finally:
        shutil.rmtree(state)


def _pod(name: str, script: str, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "worker"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script],
                            "volumeMounts": mounts}],
            "volumes": volumes,
        },
    }


def test_a_process_pod_sees_its_configmap_and_claims_at_their_mount_paths(
    simulated_kube: Kube, namespace: str, worker_command: Callable[[str], None]
) -> None:
    kube = simulated_kube
    worker_command("{command}")
    kube.core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "settings"}, "data": {"mode": "fast"},
        "binaryData": {"blob.bin": base64.b64encode(b"\x00\x01binary").decode()}})  # fmt: skip
    for claim in ("data", "shared"):
        kube.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})  # fmt: skip
    data, shared = kube.claim_dir(namespace, "data"), kube.claim_dir(namespace, "shared")
    assert data != shared and data.is_dir() and BASE not in str(data)
    (shared / "input.txt").write_text("from the test")
    script = "; ".join([
        f"cat {BASE}/settings/mode > {BASE}/data/mode.txt",
        f"od -An -tx1 {BASE}/settings/blob.bin | tr -d ' \\n' > {BASE}/data/blob.hex",
        f"cat {BASE}/shared/input.txt > {BASE}/data/copied.txt",
        f"(echo no > {BASE}/shared/written 2>/dev/null && echo writable || echo read-only) > {BASE}/data/shared.txt",
        f"(echo no > {BASE}/settings/x 2>/dev/null && echo writable || echo read-only) > {BASE}/data/settings.txt",
        f"echo scratch > {BASE}/scratch/file && cat {BASE}/scratch/file > {BASE}/data/scratch.txt",
    ])
    volumes = [{"name": "settings", "configMap": {"name": "settings"}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
               {"name": "shared", "persistentVolumeClaim": {"claimName": "shared", "readOnly": True}},
               {"name": "scratch", "emptyDir": {}}]
    mounts = [{"name": "settings", "mountPath": f"{BASE}/settings"},
              {"name": "data", "mountPath": f"{BASE}/data"},
              {"name": "shared", "mountPath": f"{BASE}/shared"},
              {"name": "scratch", "mountPath": f"{BASE}/scratch"}]
    kube.core.create_namespaced_pod(namespace, _pod("reader", script, volumes, mounts))
    pod = kube.wait_pod_phase(namespace, "reader", "Succeeded", timeout=90)
    assert pod.status.phase == "Succeeded"
    assert (data / "mode.txt").read_text() == "fast"
    assert (data / "blob.hex").read_text() == b"\x00\x01binary".hex()
    assert (data / "copied.txt").read_text() == "from the test"
    assert (data / "shared.txt").read_text().strip() == "read-only"  # the claim mounted readOnly
    assert (data / "settings.txt").read_text().strip() == "read-only"  # a ConfigMap volume is read-only
    assert (data / "scratch.txt").read_text().strip() == "scratch"
    assert sorted(p.name for p in shared.iterdir()) == ["input.txt"]
    assert not Path(BASE).exists(), "the machine's /var/lib was written"

    # A deleted claim's volume is released (once no pod uses it) and goes with its folder.
    volume = kube.core.read_namespaced_persistent_volume_claim("data", namespace).spec.volume_name
    kube.core.delete_namespaced_pod("reader", namespace)
    kube.core.delete_namespaced_persistent_volume_claim("data", namespace)
    kube.wait_for(lambda: not data.exists(), timeout=60, what="the released claim's folder removed")
    kube.wait_gone("v1", "PersistentVolume", volume, timeout=30)
    assert shared.is_dir()

    # A claim bound to a volume the provisioner did not make is not taken for one of its folders.
    foreign = f"{namespace}-foreign"
    kube.core.create_persistent_volume({
        "metadata": {"name": foreign},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(shared)},
                 "claimRef": {"namespace": namespace, "name": "foreign"}}})  # fmt: skip
    try:
        kube.core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": "foreign"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": foreign,
                     "resources": {"requests": {"storage": "1Mi"}}}})  # fmt: skip
        with pytest.raises(ValueError, match="did not make"):
            kube.claim_dir(namespace, "foreign")
    finally:
        kube.core.delete_persistent_volume(foreign)
