"""The node agent's exception tree, rooted in the shared core's.

::

    LegacyGPUError                      (legacygpu.core.errors)
    ├── ValidationError
    │   ├── UnknownDeviceError          Allocate named a device id the plugin never advertised
    │   └── UnhealthyDeviceError        Allocate named a device that is currently Unhealthy
    └── NodeAgentError                  anything else the agent reports on purpose
        ├── PluginServerError           the plugin's gRPC server could not start or answer itself
        ├── RegistrationError           the kubelet refused or could not take our Register call
        ├── OpenCLCheckError            the probe kernel could not run (openclprobe; a health reason)
        └── LabelError                  labels could not be applied to the Node object

Reading sysfs never raises: a card whose files are missing or unreadable is
reported Unhealthy with the reason (see :mod:`.sysfs`). Errors from grpc and
the kubernetes client are wrapped at the boundary with ``raise … from exc``.
"""

from __future__ import annotations

from legacygpu.core.errors import LegacyGPUError, ValidationError

__all__ = [
    "LabelError",
    "NodeAgentError",
    "PluginServerError",
    "RegistrationError",
    "UnhealthyDeviceError",
    "UnknownDeviceError",
]


class NodeAgentError(LegacyGPUError):
    """Root of the node agent's own errors."""


class PluginServerError(NodeAgentError):
    """The device-plugin gRPC server failed to bind its socket or to answer a self-check."""


class RegistrationError(NodeAgentError):
    """Register with the kubelet failed (kubelet down, version or resource name refused)."""


class LabelError(NodeAgentError):
    """Patching the Node's labels failed."""


class UnknownDeviceError(ValidationError):
    """An Allocate request named device ids this plugin does not know."""

    def __init__(self, device_ids: list[str]) -> None:
        self.device_ids = device_ids
        super().__init__(f"unknown device id(s): {', '.join(repr(d) for d in device_ids)}")


class UnhealthyDeviceError(ValidationError):
    """An Allocate request named devices that are Unhealthy right now."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        parts = [f"{device_id!r} ({reason})" for device_id, reason in reasons.items()]
        super().__init__(f"unhealthy device id(s): {'; '.join(parts)}")
