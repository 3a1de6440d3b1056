"""The committed gRPC stubs match ``grpc_predict_v2.proto``, and the proto matches the protocol.

The protocol's field numbers are checked against the messages Triton's client
ships (``tritonclient.grpc.service_pb2``, an independent implementation of
the same specification): every field we declare must have the same number,
type and cardinality there, or Triton clients would misread our answers.
"""

from __future__ import annotations

from typing import Any

import tritonclient.grpc.service_pb2 as triton_pb
from google.protobuf import descriptor_pb2

from legacygpu.core.oip import grpc_predict_v2_pb2 as pb
from legacygpu.worker.serving.grpcservice import SERVICE


def _clear_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:  # protoc fills json_name in descriptor sets, not in gencode
        field.ClearField("json_name")
    for nested in message.nested_type:
        _clear_json_names(nested)


def test_committed_generated_code_matches_the_proto() -> None:
    from legacygpu.core.oip.generate import descriptor_set

    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set()).file[0]
    for message in fresh.message_type:
        _clear_json_names(message)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == fresh, "grpc_predict_v2_pb2.py is stale: run python -m legacygpu.core.oip.generate"


def _fields(descriptor: Any, prefix: str = "") -> dict[str, tuple[int, int, bool]]:
    found = {f"{prefix}{descriptor.name}.{f.name}": (f.number, f.type, f.is_repeated) for f in descriptor.fields}
    for nested in descriptor.nested_types:
        found.update(_fields(nested, f"{prefix}{descriptor.name}."))
    return found


def test_messages_have_the_protocols_field_numbers() -> None:
    ours: dict[str, tuple[int, int, bool]] = {}
    theirs: dict[str, tuple[int, int, bool]] = {}
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        ours.update(_fields(message))
        theirs.update(_fields(triton_pb.DESCRIPTOR.message_types_by_name[name]))
    assert len(ours) > 60
    assert {k: v for k, v in ours.items() if theirs.get(k) != v} == {}


def test_the_service_is_registered_under_the_protocols_path() -> None:
    service = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    ours = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert ours <= {m.name for m in service.methods}
