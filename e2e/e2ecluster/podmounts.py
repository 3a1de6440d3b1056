"""Bind mounts for a pod's process in a private mount namespace, without touching the machine's folders.

Design: a kubelet mounts a pod's volumes at their ``mountPath`` inside the container. The
stand-in does the same for both kinds of pods with one mechanism, :func:`mount_wrapper`: the
pod's argv runs under ``unshare --mount --propagation private`` (we are root), whose shell

1. mounts a tmpfs at a folder of the pod's own (``work``);
2. overlays each folder in ``overlays`` (lower: the machine's folder; upper and work dirs: on
   that tmpfs), so the mountpoints it then makes, and anything the process writes there outside
   its volumes, land in the tmpfs and vanish with the namespace: the machine's folder is never
   written;
3. binds each volume folder at its target (shallowest first), ``-o ro`` for read-only ones
   (enforced even for root: the write fails with EROFS), then ``exec``s the pod's argv, which
   keeps the pid the simulator started.

Image pods (:mod:`e2ecluster.podimage`) use it for the mounts under ``/dev`` that buildah's
chroot drops (``overlays=["/dev"]``). Process pods (local processes on this host, see
:mod:`e2ecluster.simulator`) use it for all their volumes (:func:`process_binds`): they share
the machine's file system, so

- a ``mountPath`` the machine already has (the worker's ``/tmp`` emptyDir) is left as the
  machine's: hiding it would hide the files the test gave the pod's command (its model folder
  under pytest's ``/tmp``); the pod reads and writes the machine's folder there, as before;
- every other target is made under an overlay of its nearest existing ancestor
  (``/var/lib/legacygpu/cache`` → an overlay of ``/var/lib``); a target whose only existing
  ancestor is ``/`` is refused (the root cannot be overlaid under the machine's own mounts), so
  a process pod's volumes go under an existing folder such as ``/var/lib`` or ``/srv``.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath

__all__ = ["mount_wrapper", "nearest_existing", "process_binds"]


def nearest_existing(target: str) -> str:
    """The deepest ancestor of ``target`` (not ``target`` itself) that exists on this machine."""
    path = PurePosixPath(target).parent
    while not Path(path).exists():
        path = path.parent
    return str(path)


def process_binds(binds: dict[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """A process pod's (binds to make, folders to overlay, targets left to the machine).

    Raises ValueError for a target whose nearest existing ancestor is ``/``.
    """
    kept: dict[str, str] = {}
    host: list[str] = []
    anchors: set[str] = set()
    for target, source in binds.items():
        if Path(target).exists():
            host.append(target)
            continue
        anchor = nearest_existing(target)
        if anchor == "/":
            raise ValueError(f"mountPath {target!r}: a process pod cannot mount a new folder at the root of the "
                             "machine (overlaying / would hide its mounts); mount it under an existing folder")
        kept[target] = source
        anchors.add(anchor)
    overlays = sorted(a for a in anchors if not any(a != b and a.startswith(b.rstrip("/") + "/") for b in anchors))
    return kept, overlays, host


def mount_wrapper(work: Path, binds: dict[str, str], read_only: set[str], overlays: list[str]) -> list[str]:
    """The argv prefix that runs a command with ``binds`` made over overlays of ``overlays`` (see above)."""
    q = shlex.quote
    steps = ["set -e", f"mount -t tmpfs e2e-mounts {q(str(work))}"]
    for index, folder in enumerate(overlays):
        upper, scratch = work / f"upper{index}", work / f"work{index}"
        steps += [f"mkdir {q(str(upper))} {q(str(scratch))}",
                  f"mount -t overlay e2e-mounts -o lowerdir={q(folder)},upperdir={q(str(upper))},"
                  f"workdir={q(str(scratch))} {q(folder)}"]  # fmt: skip
    for target in sorted(binds, key=lambda t: (t.count("/"), t)):
        source, dest = q(binds[target]), q(target)
        make = f"mkdir -p {dest}" if Path(binds[target]).is_dir() else f"mkdir -p $(dirname {dest}); touch {dest}"
        steps += [make, f"mount --bind {'-o ro ' if target in read_only else ''}{source} {dest}"]
    steps.append('exec "$@"')
    work.mkdir(parents=True, exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "; ".join(steps), "e2e-mounts"]
