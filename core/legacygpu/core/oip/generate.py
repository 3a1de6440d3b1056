"""Regenerate the Python gRPC modules of the Open Inference Protocol from ``grpc_predict_v2.proto``.

The wire protocol is fixed by ``grpc_predict_v2.proto`` (written from the public protocol
specification, see its header); the generated modules are committed, and this is the one way they
are produced (:mod:`legacygpu.core.protogen` holds how)::

    python -m legacygpu.core.oip.generate
"""

from __future__ import annotations

from pathlib import Path

from legacygpu.core.protogen import ProtoModules

__all__ = ["PROTO", "descriptor_set", "generate"]

_MODULES = ProtoModules(
    Path(__file__).resolve().parent / "grpc_predict_v2.proto", "legacygpu.core.oip.generate"
)
PROTO = _MODULES.proto
generate = _MODULES.generate
descriptor_set = _MODULES.descriptor_set

if __name__ == "__main__":
    _MODULES.main()
