"""The operator's own exception tree, rooted in the shared core's.

::

    LegacyGPUError                  (legacygpu.core.errors)
    └── OperatorError               anything the operator itself reports on purpose
        └── LeadershipLostError     this replica lost its Lease and must exit non-zero

Errors from the Kubernetes API are not the operator's: they are
:class:`~legacygpu.core.kube.errors.ApiError` and its subclasses, shared with
the worker and the facade. A spec the operator refuses is not an exception
either: it becomes an ``InvalidSpec`` condition and a Warning event.
"""

from __future__ import annotations

from legacygpu.core.errors import LegacyGPUError

__all__ = ["LeadershipLostError", "OperatorError"]


class OperatorError(LegacyGPUError):
    """Root of the operator's own errors."""


class LeadershipLostError(OperatorError):
    """This replica lost its Lease: the process must end with an error so its pod restarts as a standby."""
