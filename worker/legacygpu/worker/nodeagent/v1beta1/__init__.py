"""Kubernetes Device Plugin API v1beta1: generated messages, stubs and constants.

``api.proto`` is the upstream interface definition (provenance in its header);
``api_pb2*.py`` are generated from it by :mod:`.generate` and committed; import
them as ``from legacygpu.worker.nodeagent.v1beta1 import api_pb2, api_pb2_grpc``.
This package module only holds the constants of upstream's ``constants.go``, so
that the generator can run before the generated modules exist.
"""

from __future__ import annotations

__all__ = ["DEVICE_PLUGIN_PATH", "HEALTHY", "KUBELET_SOCKET", "UNHEALTHY", "VERSION"]

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
VERSION = "v1beta1"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins"
KUBELET_SOCKET = "kubelet.sock"
