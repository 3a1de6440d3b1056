"""Fixtures for the container-image tests: the images ``make images`` builds, and buildah.

The images are built (or found up to date in ``.cache/images``) right after collection,
outside any test's timeout, by ``scripts/build-images.sh``, the script ``make images`` runs;
a cold build takes minutes (docs/images.md), a failed build fails the tests. buildah's chroot
isolation needs root, which CI has; without buildah or root the tests skip and say why. ``buildah`` is an
:class:`e2ecluster.images.Buildah` on the images' storage; ``container(name)`` yields a working
container of image ``name`` (``worker``, ``operator``) and removes it afterwards; ``scratch`` is a
fresh host folder for volumes, under ``.cache/images/scratch`` rather than pytest's tmp_path: other
pytest sessions on the machine prune ``/tmp/pytest-of-<user>`` and would delete a bound folder
under a running container.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "e2e") not in sys.path:
    sys.path.insert(0, str(REPO / "e2e"))

from e2ecluster.images import IMAGES_DIR, Buildah, ImageError, build_images, image_ref, unavailable  # noqa: E402

_HERE = Path(__file__).resolve().parent
_PROBLEM: str | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the images before the first image test (cached: seconds when up to date)."""
    global _PROBLEM
    wanted = any(_HERE in Path(str(item.path)).resolve().parents for item in session.items)
    if not wanted or session.config.option.collectonly:
        return
    _PROBLEM = unavailable()
    if _PROBLEM is None:
        try:
            build_images("worker", "operator")
        except ImageError as exc:
            _PROBLEM = f"FAILED: {exc}"


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    if _PROBLEM and _PROBLEM.startswith("FAILED"):
        pytest.fail(_PROBLEM)
    if _PROBLEM:
        pytest.skip(_PROBLEM)
    return Buildah()


@pytest.fixture
def container(buildah: Buildah) -> Iterator[Callable[[str], AbstractContextManager[str]]]:
    def make(name: str) -> AbstractContextManager[str]:
        return buildah.container(image_ref(name))

    yield make


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = IMAGES_DIR / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=root))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
