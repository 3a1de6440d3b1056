"""hostPath volumes of pods from images: bound from the node's simulated host file system, never the host's.

No cluster, no buildah: e2e/e2ecluster/nodefs.py, podimage.prepare_volumes, and podimage.dev_wrapper
run for real around a shell (root and unshare).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2ecluster import nodefs
from e2ecluster.podenv import PodContext
from e2ecluster.podimage import dev_wrapper, prepare_volumes

from legacygpu.worker.nodeagent.sysfs import scan_cards


def test_a_node_tree_holds_the_pools_cards_and_is_kept_once_made(tmp_path: Path) -> None:
    folder = nodefs.node_root(tmp_path, "gpu-node-0")
    nodefs.ensure_tree(folder, 2)
    cards = scan_cards(folder / "sys")
    assert sorted(c.pci_address for c in cards) == ["0000:01:00.0", "0000:02:00.0"]
    assert (folder / "dev/dri/renderD129").is_file() and (folder / "var/lib/kubelet/device-plugins").is_dir()
    nodefs.ensure_tree(folder, 3)  # a tree with cards is left as a test made it
    assert len(scan_cards(folder / "sys")) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_host_paths_map_into_the_node_folder(tmp_path: Path) -> None:
    nodefs.ensure_tree(tmp_path, 1)
    assert nodefs.host_path(tmp_path, {"path": "/sys", "type": "Directory"}) == tmp_path / "sys"
    assert nodefs.host_path(tmp_path, {"path": "/dev/dri/", "type": "Directory"}) == tmp_path / "dev/dri"
    assert nodefs.host_path(tmp_path, {"path": "/dev/kfd", "type": "CharDevice"}) == tmp_path / "dev/kfd"
    # Bound device nodes are character devices like /dev/null (writable on a read-only mount, as real ones are).
    render = (tmp_path / "dev/dri/renderD128").stat()
    assert stat.S_ISCHR(render.st_mode) and render.st_rdev == os.stat("/dev/null").st_rdev
    assert stat.S_ISCHR((tmp_path / "dev/kfd").stat().st_mode)
    assert (tmp_path / "dev/dri/by-path/pci-0000:01:00.0-render").is_symlink()
    plugins = nodefs.host_path(tmp_path, {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"})
    assert plugins == tmp_path / "var/lib/kubelet/device-plugins"
    made = nodefs.host_path(tmp_path, {"path": "/sys/fs/new", "type": "DirectoryOrCreate"})
    assert made == tmp_path / "sys/fs/new" and made.is_dir()


@pytest.mark.parametrize("path", ["/etc", "/", "/var/lib/kubelet", "/sys/../etc/shadow", "/devices", "/dev"])
def test_other_host_paths_are_refused_and_the_message_says_why(tmp_path: Path, path: str) -> None:
    with pytest.raises(ValueError, match="is not simulated"):
        nodefs.host_path(tmp_path, {"path": path, "type": "Directory"})


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_types_are_checked_like_a_kubelet(tmp_path: Path) -> None:
    nodefs.ensure_tree(tmp_path, 1)
    with pytest.raises(ValueError, match="type Directory"):
        nodefs.host_path(tmp_path, {"path": "/sys/missing", "type": "Directory"})
    with pytest.raises(ValueError, match="type CharDevice"):
        nodefs.host_path(tmp_path, {"path": "/dev/dri/renderD200", "type": "CharDevice"})


def _ctx(tmp_path: Path, volumes: list[dict[str, Any]], node_root: Path | None) -> PodContext:
    pod = {"metadata": {"name": "agent", "namespace": "ns"},
           "spec": {"volumes": volumes, "automountServiceAccountToken": False}}  # fmt: skip
    return PodContext(pod, "127.1.0.9", "127.0.100.1", tmp_path / "pod", [], "https://127.0.0.1:6443",
                      tmp_path / "ca.crt", node_root=node_root)  # fmt: skip


def test_prepare_volumes_binds_host_paths_from_the_node(tmp_path: Path) -> None:
    node = tmp_path / "nodes" / "gpu-node-0"
    nodefs.ensure_tree(node, 1)
    volumes = [{"name": "sys", "hostPath": {"path": "/sys", "type": "Directory"}},
               {"name": "plugins", "hostPath": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}}]
    container = {"volumeMounts": [{"name": "sys", "mountPath": "/host/sys", "readOnly": True},
                                  {"name": "plugins", "mountPath": "/var/lib/kubelet/device-plugins"}]}
    binds, read_only = prepare_volumes(None, _ctx(tmp_path, volumes, node), container)  # type: ignore[arg-type]
    assert binds == {"/host/sys": str(node / "sys"),
                     "/var/lib/kubelet/device-plugins": str(node / "var/lib/kubelet/device-plugins")}
    assert read_only == {"/host/sys"}
    escape = [{"name": "etc", "hostPath": {"path": "/etc"}}]
    with pytest.raises(ValueError, match="'/etc' is not simulated"):
        prepare_volumes(None, _ctx(tmp_path, escape, node), {"volumeMounts": [{"name": "etc", "mountPath": "/x"}]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a simulated node"):
        prepare_volumes(None, _ctx(tmp_path, volumes, None), container)  # type: ignore[arg-type]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_dev_binds_are_made_in_a_private_dev_not_the_machines(tmp_path: Path) -> None:
    # buildah's chroot isolation drops volumes under /dev, so the wrapper binds them in its own namespace.
    nodefs.ensure_tree(tmp_path / "node", 1)
    binds = {"/dev/dri": str(nodefs.host_path(tmp_path / "node", {"path": "/dev/dri"})),
             "/dev/kfd": str(nodefs.host_path(tmp_path / "node", {"path": "/dev/kfd"}))}
    argv = dev_wrapper(tmp_path / "pod-dev", binds, {"/dev/dri"})
    script = "ls /dev/dri; test -c /dev/kfd; touch /dev/dri/x 2>/dev/null && echo writable || echo read-only; " \
             "test -w /dev/dri/renderD128 && echo device-writable; test -c /dev/null && echo null-ok"  # fmt: skip
    out = subprocess.run([*argv, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.split() == ["by-path", "card0", "renderD128", "read-only", "device-writable", "null-ok"], out
    assert not Path("/dev/dri/renderD128").is_file() and not Path("/dev/kfd").is_file(), "the machine's /dev changed"
