"""The shared core's exception tree.

::

    LegacyGPUError
    ├── ValidationError          bad input from a user (a 4xx at the API)
    │   ├── UnknownModelError    the model is not in the repository
    │   └── PayloadTooLargeError the request is over the configured size limit
    ├── NotFoundError            an object (task, worker) does not exist
    ├── ConflictError            a transition the state machine forbids
    ├── ModelError               a model failed to load or run on a worker
    └── UnavailableError         a service we depend on did not answer (retry later)

Each component's own errors hang below ``LegacyGPUError`` in its errors module:
:mod:`legacygpu.core.kube.errors` (the Kubernetes API's, for every component that calls it),
:mod:`legacygpu.operator.errors` and :mod:`legacygpu.worker.nodeagent.errors`. (The serving
path's :mod:`legacygpu.worker.serving.errors` are protocol answers translated from these.)

Components translate third-party errors at their boundary with
``raise SomeError(message) from exc`` so callers only ever catch these.
"""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "LegacyGPUError",
    "ModelError",
    "NotFoundError",
    "PayloadTooLargeError",
    "UnavailableError",
    "UnknownModelError",
    "ValidationError",
]


class LegacyGPUError(Exception):
    """Root of every error the project raises on purpose."""


class ValidationError(LegacyGPUError):
    """The caller sent something malformed; the message says what."""


class UnknownModelError(ValidationError):
    """The requested model is not in the model repository."""


class PayloadTooLargeError(ValidationError):
    """The request body or a tensor is larger than the configured limit."""


class NotFoundError(LegacyGPUError):
    """The task or worker asked for does not exist."""


class ConflictError(LegacyGPUError):
    """The requested change is not allowed in the object's current state."""


class ModelError(LegacyGPUError):
    """A model could not be loaded or run; the message carries the loader's words."""


class UnavailableError(LegacyGPUError):
    """A service this one depends on (the Kubernetes API server) could not be reached or timed out."""
