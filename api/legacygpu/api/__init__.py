"""The REST facade: ``/cluster/*``, ``/ws/cluster/events``, ``/ui`` and ``/metrics``."""

from legacygpu.api.app import create_app

__all__ = ["create_app"]
