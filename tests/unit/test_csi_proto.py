"""The generated CSI stubs speak the CSI v1 wire format that kubelet and the sidecars use.

Field numbers are what travel on the wire, so they are checked against the spec's numbers
for the messages cryptvol serves most; a real gRPC server on a unix socket proves the
generated service plumbing end to end.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]


def _generate_stubs() -> None:
    """Bring the stubs up to date with csi.proto; a no-op (a hash check) when they are."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        gen_proto = importlib.import_module("gen_proto")
    finally:
        sys.path.pop(0)
    gen_proto.generate()
    importlib.invalidate_caches()


_generate_stubs()

from cryptvol.csi.gen import csi_pb2, csi_pb2_grpc  # noqa: E402


def field_numbers(message: Any) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_package_is_csi_v1() -> None:
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "CreateVolumeRequest",
            {
                "name": 1,
                "capacity_range": 2,
                "volume_capabilities": 3,
                "parameters": 4,
                "secrets": 5,
                "volume_content_source": 6,
                "accessibility_requirements": 7,
                "mutable_parameters": 8,
            },
        ),
        (
            "NodeStageVolumeRequest",
            {
                "volume_id": 1,
                "publish_context": 2,
                "staging_target_path": 3,
                "volume_capability": 4,
                "secrets": 5,
                "volume_context": 6,
            },
        ),
        (
            "NodePublishVolumeRequest",
            {
                "volume_id": 1,
                "publish_context": 2,
                "staging_target_path": 3,
                "target_path": 4,
                "volume_capability": 5,
                "readonly": 6,
                "secrets": 7,
                "volume_context": 8,
            },
        ),
        (
            "NodeExpandVolumeRequest",
            {
                "volume_id": 1,
                "volume_path": 2,
                "capacity_range": 3,
                "staging_target_path": 4,
                "volume_capability": 5,
                "secrets": 6,
            },
        ),
        ("VolumeCapability", {"block": 1, "mount": 2, "access_mode": 3}),
        (
            "VolumeCapability.MountVolume",
            {"fs_type": 1, "mount_flags": 2, "volume_mount_group": 3},
        ),
        ("ListVolumesResponse.Entry", {"volume": 1, "status": 2}),
        ("NodeGetVolumeStatsResponse", {"usage": 1, "volume_condition": 2}),
        ("VolumeUsage", {"available": 1, "total": 2, "used": 3, "unit": 4}),
        (
            "Snapshot",
            {
                "size_bytes": 1,
                "snapshot_id": 2,
                "source_volume_id": 3,
                "creation_time": 4,
                "ready_to_use": 5,
                "group_snapshot_id": 6,
            },
        ),
    ],
)
def test_field_numbers_match_the_spec(message: str, expected: dict[str, int]) -> None:
    cls: Any = csi_pb2
    for part in message.split("."):
        cls = getattr(cls, part)
    assert field_numbers(cls) == expected


def test_access_type_is_a_oneof_of_block_and_mount() -> None:
    oneof = csi_pb2.VolumeCapability.DESCRIPTOR.oneofs_by_name["access_type"]
    assert [f.name for f in oneof.fields] == ["block", "mount"]


def message_type_of(message: Any, field: str) -> str:
    message_type = message.DESCRIPTOR.fields_by_name[field].message_type
    assert message_type is not None
    return str(message_type.full_name)


def test_wrapper_and_timestamp_fields_use_the_well_known_types() -> None:
    assert message_type_of(csi_pb2.ProbeResponse, "ready") == "google.protobuf.BoolValue"
    assert (
        message_type_of(csi_pb2.GetCapacityResponse, "maximum_volume_size")
        == "google.protobuf.Int64Value"
    )
    assert message_type_of(csi_pb2.Snapshot, "creation_time") == "google.protobuf.Timestamp"


def test_enum_values_match_the_spec() -> None:
    mode = csi_pb2.VolumeCapability.AccessMode
    assert mode.SINGLE_NODE_WRITER == 1
    assert mode.MULTI_NODE_MULTI_WRITER == 5
    assert mode.SINGLE_NODE_MULTI_WRITER == 7
    node_rpc = csi_pb2.NodeServiceCapability.RPC
    assert node_rpc.STAGE_UNSTAGE_VOLUME == 1
    assert node_rpc.EXPAND_VOLUME == 3
    assert csi_pb2.ControllerServiceCapability.RPC.EXPAND_VOLUME == 9


def test_secret_maps_are_marked_csi_secret() -> None:
    secrets = csi_pb2.NodeStageVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    options = [(field.name, value) for field, value in secrets.GetOptions().ListFields()]
    assert options == [("csi_secret", True)]


def test_encoding_is_byte_for_byte_the_csi_wire_format() -> None:
    request = csi_pb2.NodeUnstageVolumeRequest(volume_id="v", staging_target_path="/s")
    # field 1 (volume_id), length 1, "v"; field 2 (staging_target_path), length 2, "/s"
    assert request.SerializeToString() == b"\x0a\x01v\x12\x02/s"


@pytest.mark.parametrize(
    ("service", "methods"),
    [
        ("Identity", ["GetPluginInfo", "GetPluginCapabilities", "Probe"]),
        (
            "Controller",
            [
                "CreateVolume",
                "DeleteVolume",
                "ControllerPublishVolume",
                "ControllerUnpublishVolume",
                "ValidateVolumeCapabilities",
                "ListVolumes",
                "GetCapacity",
                "ControllerGetCapabilities",
                "CreateSnapshot",
                "DeleteSnapshot",
                "ListSnapshots",
                "GetSnapshot",
                "ControllerExpandVolume",
                "ControllerGetVolume",
                "ControllerModifyVolume",
            ],
        ),
        (
            "Node",
            [
                "NodeStageVolume",
                "NodeUnstageVolume",
                "NodePublishVolume",
                "NodeUnpublishVolume",
                "NodeGetVolumeStats",
                "NodeExpandVolume",
                "NodeGetCapabilities",
                "NodeGetInfo",
            ],
        ),
    ],
)
def test_services_have_the_spec_methods(service: str, methods: list[str]) -> None:
    descriptor = csi_pb2.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"csi.v1.{service}"
    assert [m.name for m in descriptor.methods] == methods
    assert hasattr(csi_pb2_grpc, f"{service}Servicer")
    assert hasattr(csi_pb2_grpc, f"add_{service}Servicer_to_server")


class _NamedIdentity(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    def GetPluginInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.GetPluginInfoResponse(
            name="cryptvol.example.com", vendor_version="0.1.0", manifest={"build": "test"}
        )


@pytest.fixture
def identity_channel() -> Iterator[grpc.Channel]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="csi-", dir="/tmp") as tmp:
        address = f"unix://{tmp}/csi.sock"
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        csi_pb2_grpc.add_IdentityServicer_to_server(_NamedIdentity(), server)
        assert server.add_insecure_port(address) == 1
        server.start()
        try:
            with grpc.insecure_channel(address) as channel:
                yield channel
        finally:
            server.stop(grace=None).wait()


def test_identity_answers_get_plugin_info_over_a_unix_socket(
    identity_channel: grpc.Channel,
) -> None:
    stub = csi_pb2_grpc.IdentityStub(identity_channel)
    reply = stub.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
    assert reply.name == "cryptvol.example.com"
    assert reply.vendor_version == "0.1.0"
    assert dict(reply.manifest) == {"build": "test"}


def test_a_method_the_servicer_leaves_out_is_unimplemented(identity_channel: grpc.Channel) -> None:
    stub = csi_pb2_grpc.IdentityStub(identity_channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Probe(csi_pb2.ProbeRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
