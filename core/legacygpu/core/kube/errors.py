"""The Kubernetes API's errors, shared by every component that calls it (operator, worker, facade).

::

    LegacyGPUError (core)
    └── ApiError                 the Kubernetes API answered with an error
        ├── ApiConflictError     409: the object changed (also a core ConflictError)
        ├── ApiNotFoundError     404: no such object (also a core NotFoundError)
        └── ApiUnavailableError  no answer, 429 or 503/504 (also a core UnavailableError)

The operator's own errors are in :mod:`legacygpu.operator.errors`.

The Kubernetes client's ``ApiException`` is translated by
:func:`from_api_exception` wherever a call is made (:class:`~legacygpu.core.kube.client.KubeApi`,
the worker's :mod:`legacygpu.worker.kube`).
"""

from __future__ import annotations

import json
from typing import Any

from legacygpu.core.errors import ConflictError, LegacyGPUError, NotFoundError, UnavailableError

__all__ = [
    "ApiConflictError",
    "ApiError",
    "ApiNotFoundError",
    "ApiUnavailableError",
    "from_api_exception",
]


class ApiError(LegacyGPUError):
    """The API server refused a request; ``status`` is the HTTP code."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ApiConflictError(ApiError, ConflictError):
    """409: the object was modified (or already exists)."""


class ApiNotFoundError(ApiError, NotFoundError):
    """404: the object or resource does not exist."""


class ApiUnavailableError(ApiError, UnavailableError):
    """The API server did not answer (status 0: unreachable or timed out) or said 429/503/504 (try again)."""


def from_api_exception(exc: Any, what: str) -> ApiError:
    """An :class:`ApiError` for a ``kubernetes.client.ApiException`` raised while doing ``what``."""
    status = int(getattr(exc, "status", 0) or 0)
    reason = str(getattr(exc, "reason", "") or "")
    message = reason
    body = getattr(exc, "body", None)
    if body:
        try:
            decoded = json.loads(body)
            message = decoded.get("message") or message
            reason = decoded.get("reason") or reason
        except (ValueError, AttributeError):
            message = str(body)[:500]
    text = f"{what}: {status} {message}".strip()
    if status == 409:
        return ApiConflictError(text, status=status, reason=reason)
    if status == 404:
        return ApiNotFoundError(text, status=status, reason=reason)
    if status in (0, 429, 503, 504):
        return ApiUnavailableError(text, status=status, reason=reason)
    return ApiError(text, status=status, reason=reason)
