"""Fixtures shared by the OpenCL core tests: the PoCL (CPU) device, skipped where none is found."""

from __future__ import annotations

import pytest

from legacygpu.worker.opencl.device import DeviceNotFoundError, open_device


@pytest.fixture(scope="module")
def dctx():
    try:
        return open_device(prefer="cpu")
    except DeviceNotFoundError as exc:
        pytest.skip(str(exc))
