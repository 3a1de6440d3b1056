"""The serving path's errors, each with its HTTP status and gRPC code.

The Open Inference Protocol answers an error with ``{"error": "<message>"}``
(REST) or a status code and message (gRPC). Everything the serving path
refuses is one of these; errors from the shared core are translated once,
by :func:`from_core`::

    ServingError                      500  INTERNAL
    ├── BadRequest                    400  INVALID_ARGUMENT   (the message names the tensor)
    ├── ModelNotFound                 404  NOT_FOUND
    └── Unavailable                   503  UNAVAILABLE        (Retry-After when it helps)
        ├── QueueFull                      the model's max_queue_size is reached
        └── QueueTimeout                   the request waited longer than its timeout
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from legacygpu.core.errors import LegacyGPUError, ModelError, UnknownModelError, ValidationError

__all__ = [
    "BadRequest",
    "ModelNotFound",
    "QueueFull",
    "QueueTimeout",
    "ServingError",
    "Unavailable",
    "from_core",
]


class ServingError(Exception):
    """A request the serving path could not answer with a result."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadRequest(ServingError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServingError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class QueueFull(Unavailable):
    """The model's queue holds ``max_queue_size`` requests already."""


class QueueTimeout(Unavailable):
    """The request's timeout passed while it waited in the queue."""


def from_core(exc: LegacyGPUError) -> ServingError:
    """The serving error for one of the core's errors (raise it ``from exc``)."""
    if isinstance(exc, UnknownModelError):
        return ModelNotFound(str(exc))
    if isinstance(exc, ValidationError):
        return BadRequest(str(exc))
    if isinstance(exc, ModelError):
        return ServingError(str(exc))
    return ServingError(f"{type(exc).__name__}: {exc}")
