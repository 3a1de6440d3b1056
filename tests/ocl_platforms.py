"""The OpenCL platforms the core's test tiers run on: PoCL and Mesa rusticl (on llvmpipe).

PoCL is the CPU driver the core was first measured on; rusticl is the frontend,
compiler path and runtime an RX 580 owner on Debian 12 or Ubuntu gets with
``RUSTICL_ENABLE=radeonsi``. Here it drives llvmpipe, Mesa's CPU device
(``RUSTICL_ENABLE=llvmpipe``, set for the whole test session in
``tests/conftest.py`` before any OpenCL call), so every tier that is
parametrised over :data:`PLATFORMS` runs through rusticl without a card.

:func:`open_platform` opens the platform's CPU device. A missing platform
skips the test with what to install, except under CI (``CI`` set), where
``make setup`` installs both and a missing one is a failure.
:func:`require` skips a test on a driver that lacks a feature it needs,
naming the feature.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

PLATFORMS = ("pocl", "rusticl")

_INSTALL = {
    "pocl": "apt install pocl-opencl-icd",
    "rusticl": "apt install mesa-opencl-icd, with RUSTICL_ENABLE=llvmpipe",
}


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def device_index(platform: str) -> int:
    """The ``legacygpu devices`` index of ``platform``'s CPU device (skips or fails when there is none)."""
    from legacygpu.worker.opencl.device import discover

    for info in discover():
        if info.driver_family == platform and info.device_type == "cpu":
            return info.index
    _missing(f"no {platform} CPU device: {_INSTALL[platform]}")
    raise AssertionError("unreachable")


def open_platform(platform: str) -> Any:
    """A DeviceContext on ``platform``'s CPU device."""
    from legacygpu.worker.opencl.device import open_device

    return open_device(device_index(platform))


def require(dctx: Any, feature: str, supported: bool) -> None:
    """Skip when the device's driver lacks ``feature`` (the skip names the driver and the feature)."""
    if not supported:
        pytest.skip(f"{dctx.info.driver_family} ({dctx.info.name}) lacks {feature}")
