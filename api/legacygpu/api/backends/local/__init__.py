"""The local cluster backend: SQLite state, worker processes on this machine."""

from legacygpu.api.backends.local.backend import LocalBackend
from legacygpu.api.backends.local.store import Store

__all__ = ["LocalBackend", "Store"]
