"""Fixtures shared by the OpenCL core tests: one device per platform (PoCL, rusticl on llvmpipe).

``dctx`` is parametrised over :data:`ocl_platforms.PLATFORMS`, so every test
that takes it runs on both drivers; ``on_platform`` also points
``LEGACYGPU_OPENCL_DEVICE`` at that device, for tests that go through the CLI.
"""

from __future__ import annotations

import pytest
from ocl_platforms import PLATFORMS, open_platform


@pytest.fixture(scope="module", params=PLATFORMS)
def dctx(request: pytest.FixtureRequest):
    return open_platform(request.param)


@pytest.fixture
def on_platform(dctx, monkeypatch: pytest.MonkeyPatch):
    """``dctx``, with ``LEGACYGPU_OPENCL_DEVICE`` naming it (the CLI and the backends open that device)."""
    monkeypatch.setenv("LEGACYGPU_OPENCL_DEVICE", str(dctx.info.index))
    return dctx
