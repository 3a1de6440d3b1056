"""Cluster backends behind the facade; see :mod:`legacygpu.api.backends.base`."""
