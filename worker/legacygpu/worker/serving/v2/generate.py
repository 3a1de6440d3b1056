"""Regenerate the Python gRPC modules of the Open Inference Protocol from ``grpc_predict_v2.proto``.

Design: the wire protocol is fixed by ``grpc_predict_v2.proto`` (written from the
public protocol specification, see its header). The generated ``grpc_predict_v2_pb2.py``,
``grpc_predict_v2_pb2.pyi`` and ``grpc_predict_v2_pb2_grpc.py`` are committed so the worker
image needs no code generator; this module is the one way they are produced, the same
way the device plugin's are (:mod:`legacygpu.worker.nodeagent.v1beta1.generate`)::

    python -m legacygpu.worker.serving.v2.generate

It runs ``grpc_tools.protoc`` with the ``worker/`` source root as include path,
so the generated gRPC module imports ``legacygpu.worker.serving.v2.grpc_predict_v2_pb2``
by its full name, and prepends a provenance header naming the tool versions.
The generated code checks at import time that the installed ``protobuf`` and
``grpcio`` are at least the versions it was generated with.
:func:`descriptor_set` compiles the proto without writing modules; a test uses
it to prove the committed modules still match the ``.proto``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO", "descriptor_set", "generate"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
# worker/ : the source root holding the ``legacygpu`` namespace directory.
SOURCE_ROOT = HERE.parents[3]
PROTO = HERE / "grpc_predict_v2.proto"
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # imported here: a dev-only dependency

    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{SOURCE_ROOT}", f"-I{include}", *args])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} for {PROTO}")


def _header() -> str:
    tools = importlib.metadata.version("grpcio-tools")
    return (
        f"# Provenance: generated from {PROTO.relative_to(SOURCE_ROOT)} by\n"
        "#   python -m legacygpu.worker.serving.v2.generate\n"
        f"# with grpcio-tools {tools}. Do not edit; edit grpc_predict_v2.proto and regenerate.\n"
    )


def generate(out_root: Path = SOURCE_ROOT) -> list[Path]:
    """Write the three generated modules under ``out_root`` and return their paths."""
    relative = PROTO.relative_to(SOURCE_ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        _protoc([f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(PROTO)])
        written = []
        for name in GENERATED:
            produced = Path(tmp) / relative.parent / name
            target = out_root / relative.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_header() + produced.read_text())
            written.append(target)
    return written


def descriptor_set() -> bytes:
    """The serialized ``FileDescriptorSet`` protoc makes of ``grpc_predict_v2.proto`` right now."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grpc_predict_v2.pb"
        _protoc([f"--descriptor_set_out={out}", str(PROTO)])
        return out.read_bytes()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE_ROOT):
        logger.info("wrote %s", path)
