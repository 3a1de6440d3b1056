"""Errors raised by the e2e control plane, rooted in the project's tree.

::

    LegacyGPUError                      (legacygpu.core.errors)
    └── ClusterError                    the e2e control plane cannot do what was asked
        ├── PkiError                    openssl is missing or failed
        ├── BuildError                  the Kubernetes binaries are absent and cannot be built
        ├── StartupError                a component exited or never became healthy
        └── WaitTimeout                 a condition was not reached in time (helpers in kube.py)
"""

from __future__ import annotations

from legacygpu.core.errors import LegacyGPUError

__all__ = ["BuildError", "ClusterError", "PkiError", "StartupError", "WaitTimeout"]


class ClusterError(LegacyGPUError):
    """The e2e control plane cannot do what was asked; the message says which part failed."""


class PkiError(ClusterError):
    """Generating a key or certificate with openssl failed."""


class BuildError(ClusterError):
    """The Kubernetes binaries are missing and e2e/build-kube.sh could not build them."""


class StartupError(ClusterError):
    """A component exited early or did not become healthy; the message names its log file."""


class WaitTimeout(ClusterError):
    """A wait helper gave up; the message carries the last state it saw."""
