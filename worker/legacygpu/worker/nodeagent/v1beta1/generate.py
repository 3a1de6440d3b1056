"""Regenerate the Python gRPC modules of the Device Plugin API from ``api.proto``.

The kubelet's wire protocol is fixed by ``api.proto`` (a copy of the upstream interface
definition, see its header); the generated modules are committed, and this is the one way they
are produced (:mod:`legacygpu.core.protogen` holds how)::

    python -m legacygpu.worker.nodeagent.v1beta1.generate      # or: make nodeagent-proto
"""

from __future__ import annotations

from pathlib import Path

from legacygpu.core.protogen import ProtoModules

__all__ = ["PROTO", "descriptor_set", "generate"]

_MODULES = ProtoModules(Path(__file__).resolve().parent / "api.proto", "legacygpu.worker.nodeagent.v1beta1.generate")
PROTO = _MODULES.proto
generate = _MODULES.generate
descriptor_set = _MODULES.descriptor_set

if __name__ == "__main__":
    _MODULES.main()
