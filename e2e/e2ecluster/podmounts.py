"""Bind mounts for a pod's process in a private mount namespace, without touching the machine's folders.

Design: a kubelet mounts a pod's volumes at their ``mountPath`` inside the container. The
stand-in does the same for both kinds of pods with one mechanism, :func:`mount_wrapper`: the
pod's argv runs under ``unshare --mount --propagation private`` (we are root), whose shell

1. mounts a tmpfs at a folder of the pod's own (``work``);
2. mounts an overlay of each folder in ``overlays`` (lower: the machine's folder; upper and work
   dirs: on that tmpfs) at a folder on the tmpfs, so the mountpoints it then makes, and anything
   the process writes there outside its volumes, land in the tmpfs and vanish with the namespace:
   the machine's folder is never written;
3. binds each volume folder at its target (shallowest first; a target under an overlaid folder at
   its place in that overlay), ``-o ro`` for read-only ones (enforced even for root: the write
   fails with EROFS). Every bind is made before any overlay covers its folder, so a volume folder
   under an overlaid one (the state dir under ``/var/lib``) is the machine's, not its overlay;
4. moves each overlay, with the binds in it, over its folder, then ``exec``s the pod's argv,
   which keeps the pid the simulator started.

Image pods (:mod:`e2ecluster.podimage`) use it for the mounts under ``/dev`` that buildah's
chroot drops (``overlays=["/dev"]``). Process pods (local processes on this host, see
:mod:`e2ecluster.simulator`) use it for all their volumes (:func:`process_binds`): they share
the machine's file system, so

- an emptyDir at a ``mountPath`` the machine already has (the worker's ``/tmp``) is left as the
  machine's: hiding it would hide the files the test gave the pod's command (its model folder
  under pytest's ``/tmp``); the pod reads and writes the machine's folder there, as before. Any
  other volume at an existing path (a claim, a ConfigMap, a hostPath) is bound over it, in the
  pod's namespace only, as a kubelet would;
- a target under another volume's is made in that volume (as a kubelet does);
- every other target is made under an overlay of its nearest existing ancestor
  (``/var/lib/legacygpu/cache`` → an overlay of ``/var/lib``); a target whose only existing
  ancestor is ``/`` is refused (the root cannot be overlaid under the machine's own mounts), so
  a process pod's volumes go under an existing folder such as ``/var/lib`` or ``/srv``.
"""

from __future__ import annotations

import shlex
from collections.abc import Set
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["empty_dirs", "mount_wrapper", "nearest_existing", "process_binds"]


def nearest_existing(target: str) -> str:
    """The deepest ancestor of ``target`` (not ``target`` itself) that exists on this machine."""
    path = PurePosixPath(target).parent
    while not Path(path).exists():
        path = path.parent
    return str(path)


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def empty_dirs(pod_spec: dict[str, Any], container: dict[str, Any]) -> set[str]:
    """The container's mountPaths that are emptyDir volumes."""
    kinds = {v["name"]: v for v in pod_spec.get("volumes") or []}
    return {m["mountPath"] for m in container.get("volumeMounts") or []
            if "emptyDir" in kinds.get(m["name"], {})}  # fmt: skip


def process_binds(binds: dict[str, str], empty: Set[str] = frozenset()) -> tuple[dict[str, str], list[str], list[str]]:
    """A process pod's (binds to make, folders to overlay, emptyDir targets left to the machine).

    ``empty``: the targets that are emptyDirs. Raises ValueError for a target whose nearest
    existing ancestor is ``/``.
    """
    host = sorted(t for t in binds if t in empty and Path(t).exists())
    kept = {t: s for t, s in binds.items() if t not in host}
    anchors: set[str] = set()
    for target in kept:
        if Path(target).exists() or any(_under(target, other) for other in kept):
            continue  # bound over the machine's folder, or made inside another volume
        anchor = nearest_existing(target)
        if anchor == "/":
            raise ValueError(f"mountPath {target!r}: a process pod cannot mount a new folder at the root of the "
                             "machine (overlaying / would hide its mounts); mount it under an existing folder")
        anchors.add(anchor)
    overlays = sorted(a for a in anchors if not any(_under(a, b) for b in anchors))
    return kept, overlays, host


def mount_wrapper(work: Path, binds: dict[str, str], read_only: set[str], overlays: list[str]) -> list[str]:
    """The argv prefix that runs a command with ``binds`` made over overlays of ``overlays`` (see above)."""
    q = shlex.quote
    steps = ["set -e", f"mount -t tmpfs e2e-mounts {q(str(work))}"]
    merged: dict[str, Path] = {}
    for index, folder in enumerate(overlays):
        upper, scratch, merged[folder] = work / f"upper{index}", work / f"work{index}", work / f"merged{index}"
        steps += [f"mkdir {q(str(upper))} {q(str(scratch))} {q(str(merged[folder]))}",
                  f"mount -t overlay e2e-mounts -o lowerdir={q(folder)},upperdir={q(str(upper))},"
                  f"workdir={q(str(scratch))} {q(str(merged[folder]))}"]  # fmt: skip
    for target in sorted(binds, key=lambda t: (t.count("/"), t)):
        place = target
        for folder, at in merged.items():
            if _under(target, folder):
                place = str(at / PurePosixPath(target).relative_to(folder))
        source, dest = q(binds[target]), q(place)
        make = f"mkdir -p {dest}" if Path(binds[target]).is_dir() else f"mkdir -p $(dirname {dest}); touch {dest}"
        steps += [make, f"mount --bind {'-o ro ' if target in read_only else ''}{source} {dest}"]
    steps += [f"mount --move {q(str(at))} {q(folder)}" for folder, at in merged.items()]
    steps.append('exec "$@"')
    work.mkdir(parents=True, exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(steps), "e2e-mounts"]
