"""Running commands in the project's container images with buildah (chroot isolation).

Design: ``make images`` (scripts/build-images.sh) keeps its buildah storage under
``.cache/images`` (``--root``/``--runroot``), so every buildah call that wants those images
passes the same flags; :class:`Buildah` holds them. There is no container engine here
(podman's runtimes fail on cgroups v1 hybrid hosts), so a "container" is a buildah working
container: ``buildah from IMAGE`` makes one, ``buildah run --isolation chroot`` runs a process
in it with the image's user, working directory and environment (or overrides), host folders
bound in as volumes, and ``buildah rm`` removes it. :meth:`Buildah.container` is the
context manager that guarantees the removal; :meth:`Buildah.run_argv` gives the argv of a
long-running ``buildah run`` for callers that supervise the process themselves (the e2e
kubelet stand-in).

Chroot isolation shares the host's network namespace, so a process in the image listens on
and dials loopback addresses like a local process would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IMAGES_DIR", "Buildah", "ImageError", "build_images", "image_ref", "unavailable"]

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / ".cache" / "images"
DEFAULT_TAG = "dev"


class ImageError(RuntimeError):
    """A buildah call failed; the message carries its stderr."""


def image_ref(name: str, tag: str = DEFAULT_TAG) -> str:
    """The local reference ``make images`` gives image ``name`` (``worker``, ``operator``)."""
    return f"localhost/legacygpu-{name}:{tag}"


def unavailable() -> str | None:
    """Why images cannot be built or run here, or None when they can."""
    if shutil.which("buildah") is None or shutil.which("mmdebstrap") is None:
        return "buildah and mmdebstrap are not installed (make setup installs them)"
    if os.geteuid() != 0:
        return "buildah's chroot isolation needs root"
    return None


def build_images(*names: str) -> None:
    """Build (or find up to date) the named images with scripts/build-images.sh; :class:`ImageError` on failure."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", "scripts/build-images.sh", *names], cwd=REPO, env=env, capture_output=True,
                         text=True, check=False)  # fmt: skip
    if out.returncode != 0:
        raise ImageError(f"scripts/build-images.sh {' '.join(names)} failed: {out.stderr[-3000:]}")


@dataclass(frozen=True)
class Buildah:
    """buildah bound to one storage folder (``.cache/images`` by default)."""

    root: Path = IMAGES_DIR

    @property
    def base(self) -> list[str]:
        binary = shutil.which("buildah") or "buildah"
        return [binary, "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", "overlay"]  # fmt: skip

    def call(self, *args: str, timeout: float = 600) -> str:
        """Run ``buildah ARGS`` and return its stdout; :class:`ImageError` on failure."""
        out = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise ImageError(f"buildah {' '.join(args[:2])} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        return out.stdout

    def inspect(self, ref: str) -> dict[str, Any]:
        """The image's buildah inspect document."""
        return dict(json.loads(self.call("inspect", "--type", "image", ref)))

    def config(self, ref: str) -> dict[str, Any]:
        """The image's OCI config (``User``, ``Env``, ``WorkingDir``, ``Entrypoint``, ``Cmd``, ``Volumes``...)."""
        return dict(self.inspect(ref)["OCIv1"].get("config") or {})

    def size(self, ref: str) -> int:
        """The image's size in bytes: its layers' uncompressed sizes, read from the storage's records."""
        image_id = self.inspect(ref)["FromImageID"]
        storage = self.root / "storage"
        images = json.loads((storage / "overlay-images" / "images.json").read_text())
        layers = {x["id"]: x for x in json.loads((storage / "overlay-layers" / "layers.json").read_text())}
        layer_id = next(i["layer"] for i in images if i["id"] == image_id)
        total = 0
        while layer_id:
            layer = layers[layer_id]
            total += int(layer.get("diff-size", 0))
            layer_id = layer.get("parent", "")
        return total

    def exists(self, ref: str) -> bool:
        try:
            self.call("inspect", "--type", "image", ref, timeout=60)
        except ImageError:
            return False
        return True

    def new_container(self, ref: str, name: str | None = None, *, hosts: Mapping[str, str] | None = None) -> str:
        """Make a working container from image ``ref`` (named ``name`` if given) and return its name.

        ``hosts`` (name -> IP) go into the container's ``/etc/hosts``.

        The image's declared VOLUMEs are dropped from the working container: ``buildah run`` backs each
        with an anonymous folder of its own and, in an order that changes from run to run (a Go map's),
        mounts that folder over the host folder bound at the same path, so a process wrote to the
        anonymous folder and the host folder stayed empty. A kubelet mounts the pod's volumes there.
        """
        named = ["--name", name] if name else []
        added = [f"--add-host={host}:{ip}" for host, ip in sorted((hosts or {}).items())]
        container = self.call("from", "--pull-never", "--quiet", *named, *added, ref).strip()
        for volume in self.config(ref).get("Volumes") or {}:
            self.call("config", "--volume", f"{volume}-", container)
        return container

    @contextlib.contextmanager
    def container(self, ref: str) -> Iterator[str]:
        """A working container from image ``ref`` (see :meth:`new_container`), removed on exit."""
        name = self.new_container(ref)
        try:
            yield name
        finally:
            with contextlib.suppress(ImageError, subprocess.TimeoutExpired):
                self.call("rm", name, timeout=120)

    def run_argv(
        self,
        container: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        volumes: Mapping[str, str] | None = None,
        read_only: Sequence[str] = (),
    ) -> list[str]:
        """The argv of ``buildah run`` for ``argv`` in ``container``.

        ``volumes`` maps container paths to host folders or files (bound read-write unless the
        container path is in ``read_only``; order: :func:`_mount_order`). ``env`` is added to
        the image's environment.
        """
        cmd = [*self.base, "run", "--isolation", "chroot", "--terminal=false"]
        if user is not None:
            cmd += ["--user", user]
        if workdir:
            cmd += ["--workingdir", workdir]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        for target, source in _mount_order(volumes or {}):
            mode = "ro" if target in read_only else "rw"
            cmd += ["--volume", f"{source}:{_through_var_run(target)}:{mode}"]
        return [*cmd, container, "--", *argv]

    def run(
        self, container: str, argv: Sequence[str], *, timeout: float = 600, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``container`` to completion (see :meth:`run_argv` for the options)."""
        return subprocess.run(self.run_argv(container, argv, **kwargs), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip


def _mount_order(volumes: Mapping[str, str]) -> list[tuple[str, str]]:
    """Volumes in an order buildah binds correctly: parents before children, as a kubelet does.

    buildah 1.28's chroot isolation binds the volumes in the order given. With host folders under
    /tmp bound before a /tmp volume, the later ones were not the host folders they name (the
    process wrote to the image's own folder); in the other order they were. So a volume whose
    destination holds another volume's source comes after that one. (The image's own VOLUMEs are a
    separate problem, solved in :meth:`Buildah.new_container`.)
    """

    def shadows(target: str) -> bool:
        return any(source.startswith(target.rstrip("/") + "/") for source in volumes.values())

    return sorted(volumes.items(), key=lambda item: (shadows(item[0]), item[0].count("/"), item[0]))


def _through_var_run(target: str) -> str:
    """``/var/run/...`` as ``/run/...``: buildah binds onto the symlink's path itself and the mount is lost.

    ``/var/run`` is a symlink to ``/run`` in the images (and every current distribution); binding the
    ServiceAccount folder at ``/var/run/secrets/...`` left nothing there, at ``/run/secrets/...`` it is
    seen through both paths.
    """
    return "/run/" + target.removeprefix("/var/run/") if target.startswith("/var/run/") else target
