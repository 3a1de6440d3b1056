"""Simulated host file systems of the simulated GPU nodes, and ``hostPath`` volumes bound from them.

Design: a simulated node has no host, yet the node agent's DaemonSet mounts three host folders: the
kubelet's device-plugin folder, ``/sys`` and ``/dev/dri``. Each node gets a folder of its own,
``<root>/nodes/<node>/``, laid out like the parts of a host those mounts read (built with
:class:`legacygpu.testing.sysfs_tree.NodeTree`, the fixture the node agent's own tests use):

- ``sys/``: an amdgpu sysfs tree with ``pool.gpus`` RX 580 cards (PCI directories, DRM minors,
  hwmon sensors, the driver links);
- ``dev/dri/``: ``card<N>``/``renderD<M>`` and ``by-path`` links, and ``dev/kfd``. The fixture makes
  them plain files; when a pod binds them (:func:`host_path`) they become character devices with
  ``/dev/null``'s numbers (1:3), because the DaemonSet mounts ``/dev/dri`` read-only and a real
  device node stays writable on a read-only mount where a plain file does not (the agent checks
  it can open its render nodes read-write). Nothing here is a GPU;
- ``var/lib/kubelet/device-plugins/``: where the stand-in's device manager serves ``kubelet.sock``
  (:mod:`e2ecluster.devicemanager`) and the agent its plugin socket.

:func:`host_path` maps a pod's ``hostPath`` to that node's folder. Only paths inside the three
simulated places (and ``/dev/kfd``) are allowed; anything else is refused with a message that says
so: a pod never gets a folder of the real host. ``type`` is checked as a kubelet would for
``Directory``/``File``/``CharDevice`` (a fake device node is a plain file, so ``CharDevice`` accepts
one) and ``DirectoryOrCreate``/``FileOrCreate`` create inside the node's folder.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from legacygpu.testing.sysfs_tree import NodeTree, rx580

__all__ = ["SIMULATED_PATHS", "as_null_device", "ensure_tree", "host_path", "node_root"]

# Host paths a simulated node has, as (host path prefix, folder under the node's root).
SIMULATED_PATHS = {
    "/sys": "sys",
    "/dev/dri": "dev/dri",
    "/dev/kfd": "dev/kfd",
    "/var/lib/kubelet/device-plugins": "var/lib/kubelet/device-plugins",
}


def node_root(root: Path, node: str) -> Path:
    """The simulated host file system of ``node`` under the cluster's state folder ``root``."""
    return root / "nodes" / node


def ensure_tree(folder: Path, gpus: int) -> NodeTree:
    """Make ``folder`` a node file system with ``gpus`` RX 580s, unless it already holds cards.

    A tree that exists is left as it is, so a test may plug or unplug cards before it starts pods.
    """
    tree = NodeTree(folder)
    if not any((tree.sysfs / "class/drm").glob("card*")):
        for index in range(gpus):
            tree.plug(rx580(index))
    return tree


def host_path(folder: Path, volume: dict[str, object]) -> Path:
    """The folder or file that stands for the ``hostPath`` volume source ``volume`` on a node.

    Raises ValueError for a path that is not simulated or that fails its ``type`` check.
    """
    path = posixpath.normpath(str(volume.get("path") or ""))
    kind = str(volume.get("type") or "")
    for prefix, relative in SIMULATED_PATHS.items():
        if path == prefix or path.startswith(prefix + "/"):
            local = folder / relative / posixpath.relpath(path, prefix)
            break
    else:
        allowed = ", ".join(SIMULATED_PATHS)
        raise ValueError(f"hostPath {path!r} is not simulated (a simulated node has only {allowed}; "
                         "the real host's folders are never bound)")  # fmt: skip
    local = Path(posixpath.normpath(local))
    if kind == "DirectoryOrCreate":
        local.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        local.touch()
    elif kind == "Directory" and not local.is_dir():
        raise ValueError(f"hostPath {path!r} (type Directory) is not a directory on the simulated node")
    elif kind in ("File", "CharDevice", "BlockDevice") and not local.is_file():
        raise ValueError(f"hostPath {path!r} (type {kind}) does not exist on the simulated node")
    elif not kind and not local.exists():
        local.mkdir(parents=True, exist_ok=True)  # "": no check; the kubelet makes a missing folder
    if path.startswith("/dev/"):
        for node in [local] if local.is_file() else local.iterdir():
            as_null_device(node)
    return local


def as_null_device(path: Path) -> None:
    """Turn the plain file ``path`` (not a link) into a character device with ``/dev/null``'s numbers."""
    if path.is_symlink() or not path.is_file():
        return
    path.unlink()
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
