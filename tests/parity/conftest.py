"""The parity suite's fixture: one driver per backend (see drivers.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drivers import Driver, KubeDriver, LocalDriver

from legacygpu.operator.crdgen import all_crds
from legacygpu.testing.emulator import EmulatorThread


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(all_crds()) as server:
        yield server


@pytest.fixture(params=["local", "kubernetes"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    if request.param == "local":
        yield LocalDriver(tmp_path)
        return
    server: EmulatorThread = request.getfixturevalue("emulator")
    kube = KubeDriver(httpx.Client(base_url=server.url, timeout=10.0))
    yield kube
    for body in list(kube._bodies()):  # the emulator is shared by the module's tests
        kube.http.delete(kube._path(body["metadata"]["name"]))
    kube.close()
