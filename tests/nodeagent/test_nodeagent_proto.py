"""The Device Plugin API we speak is upstream's v1beta1, field for field.

UPSTREAM below is transcribed from k8s.io/kubelet pkg/apis/deviceplugin/v1beta1/api.proto
(kubernetes/kubelet 63b3249): a change to our api.proto that alters the wire
format (a number, a type, a name, a streaming flag) fails here. A second test
proves the committed generated modules still match api.proto.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor as F

from legacygpu.worker.nodeagent.v1beta1 import api_pb2

S, B, I32, I64, MSG = F.TYPE_STRING, F.TYPE_BOOL, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_MESSAGE
ONE, MANY = "one", "many"

# message -> [(field name, number, type, cardinality, message type or None)]
UPSTREAM: dict[str, list[tuple[str, int, int, str, str | None]]] = {
    "DevicePluginOptions": [("pre_start_required", 1, B, ONE, None),
                            ("get_preferred_allocation_available", 2, B, ONE, None)],
    "RegisterRequest": [("version", 1, S, ONE, None), ("endpoint", 2, S, ONE, None),
                        ("resource_name", 3, S, ONE, None),
                        ("options", 4, MSG, ONE, "v1beta1.DevicePluginOptions")],
    "Empty": [],
    "ListAndWatchResponse": [("devices", 1, MSG, MANY, "v1beta1.Device")],
    "TopologyInfo": [("nodes", 1, MSG, MANY, "v1beta1.NUMANode")],
    "NUMANode": [("ID", 1, I64, ONE, None)],
    "Device": [("ID", 1, S, ONE, None), ("health", 2, S, ONE, None),
               ("topology", 3, MSG, ONE, "v1beta1.TopologyInfo")],
    "PreStartContainerRequest": [("devices_ids", 1, S, MANY, None)],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [
        ("container_requests", 1, MSG, MANY, "v1beta1.ContainerPreferredAllocationRequest")],
    "ContainerPreferredAllocationRequest": [("available_deviceIDs", 1, S, MANY, None),
                                            ("must_include_deviceIDs", 2, S, MANY, None),
                                            ("allocation_size", 3, I32, ONE, None)],
    "PreferredAllocationResponse": [
        ("container_responses", 1, MSG, MANY, "v1beta1.ContainerPreferredAllocationResponse")],
    "ContainerPreferredAllocationResponse": [("deviceIDs", 1, S, MANY, None)],
    "AllocateRequest": [("container_requests", 1, MSG, MANY, "v1beta1.ContainerAllocateRequest")],
    "ContainerAllocateRequest": [("devices_ids", 1, S, MANY, None)],
    "CDIDevice": [("name", 1, S, ONE, None)],
    "AllocateResponse": [("container_responses", 1, MSG, MANY, "v1beta1.ContainerAllocateResponse")],
    "ContainerAllocateResponse": [
        ("envs", 1, MSG, MANY, "v1beta1.ContainerAllocateResponse.EnvsEntry"),
        ("mounts", 2, MSG, MANY, "v1beta1.Mount"),
        ("devices", 3, MSG, MANY, "v1beta1.DeviceSpec"),
        ("annotations", 4, MSG, MANY, "v1beta1.ContainerAllocateResponse.AnnotationsEntry"),
        ("cdi_devices", 5, MSG, MANY, "v1beta1.CDIDevice")],
    "Mount": [("container_path", 1, S, ONE, None), ("host_path", 2, S, ONE, None),
              ("read_only", 3, B, ONE, None)],
    "DeviceSpec": [("container_path", 1, S, ONE, None), ("host_path", 2, S, ONE, None),
                   ("permissions", 3, S, ONE, None)],
}

# service -> [(method, input, output, server streaming)]
SERVICES = {
    "Registration": [("Register", "RegisterRequest", "Empty", False)],
    "DevicePlugin": [
        ("GetDevicePluginOptions", "Empty", "DevicePluginOptions", False),
        ("ListAndWatch", "Empty", "ListAndWatchResponse", True),
        ("GetPreferredAllocation", "PreferredAllocationRequest", "PreferredAllocationResponse", False),
        ("Allocate", "AllocateRequest", "AllocateResponse", False),
        ("PreStartContainer", "PreStartContainerRequest", "PreStartContainerResponse", False),
    ],
}


def _field(f: F) -> tuple[str, int, int, str, str | None]:
    repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == F.LABEL_REPEATED
    return (f.name, f.number, f.type, MANY if repeated else ONE,
            f.message_type.full_name if f.message_type is not None else None)


def test_messages_match_upstream_field_for_field() -> None:
    file = api_pb2.DESCRIPTOR
    assert file.package == "v1beta1"
    assert sorted(file.message_types_by_name) == sorted(UPSTREAM)
    for name, fields in UPSTREAM.items():
        assert [_field(f) for f in file.message_types_by_name[name].fields] == fields, name
    envs = file.message_types_by_name["ContainerAllocateResponse"].nested_types_by_name["EnvsEntry"]
    assert envs.GetOptions().map_entry


def test_services_match_upstream_method_for_method() -> None:
    file = api_pb2.DESCRIPTOR
    assert sorted(file.services_by_name) == sorted(SERVICES)
    for service, methods in SERVICES.items():
        got = [(m.name, m.input_type.name, m.output_type.name, m.server_streaming)
               for m in file.services_by_name[service].methods]
        assert got == methods
        assert not any(m.client_streaming for m in file.services_by_name[service].methods)
    # the wire paths the kubelet calls
    assert file.services_by_name["DevicePlugin"].methods_by_name["Allocate"].full_name == \
        "v1beta1.DevicePlugin.Allocate"


def test_committed_generated_code_matches_the_proto() -> None:
    from legacygpu.worker.nodeagent.v1beta1.generate import descriptor_set

    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(api_pb2.DESCRIPTOR.serialized_pb)
    for message in fresh.message_type:  # protoc fills json_name in descriptor sets, not in gencode
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            for field in nested.field:
                field.ClearField("json_name")
    assert committed == fresh, "api_pb2.py is stale: run `make nodeagent-proto`"
