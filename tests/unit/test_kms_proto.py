"""The generated KMS stubs speak kube-apiserver's KMS v2 wire format (k8s.io/kms apis/v2):
package `v2`, service `KeyManagementService`, and the API's field numbers and types."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from cryptvol.kms.gen import kms_pb2, kms_pb2_grpc

STRING, BYTES, MESSAGE = FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, (
    FieldDescriptor.TYPE_MESSAGE
)


def test_the_service_is_v2_key_management_service() -> None:
    service = kms_pb2.DESCRIPTOR.services_by_name["KeyManagementService"]
    assert service.full_name == "v2.KeyManagementService"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {
        "Status": ("StatusRequest", "StatusResponse"),
        "Decrypt": ("DecryptRequest", "DecryptResponse"),
        "Encrypt": ("EncryptRequest", "EncryptResponse"),
    }
    assert hasattr(kms_pb2_grpc, "add_KeyManagementServiceServicer_to_server")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("StatusRequest", {}),
        ("StatusResponse", {"version": (1, STRING), "healthz": (2, STRING),
                            "key_id": (3, STRING)}),
        ("DecryptRequest", {"ciphertext": (1, BYTES), "uid": (2, STRING),
                            "key_id": (3, STRING), "annotations": (4, MESSAGE)}),
        ("DecryptResponse", {"plaintext": (1, BYTES)}),
        ("EncryptRequest", {"plaintext": (1, BYTES), "uid": (2, STRING)}),
        ("EncryptResponse", {"ciphertext": (1, BYTES), "key_id": (2, STRING),
                             "annotations": (3, MESSAGE)}),
    ],
)
def test_fields_match_the_api(message: str, expected: dict[str, tuple[int, int]]) -> None:
    cls: Any = getattr(kms_pb2, message)
    assert {f.name: (f.number, f.type) for f in cls.DESCRIPTOR.fields} == expected


@pytest.mark.parametrize("message", ["DecryptRequest", "EncryptResponse"])
def test_annotations_are_a_map_of_string_to_bytes(message: str) -> None:
    entry = getattr(kms_pb2, message).DESCRIPTOR.fields_by_name["annotations"].message_type
    assert entry.GetOptions().map_entry
    assert (entry.fields_by_name["key"].type, entry.fields_by_name["value"].type) == (
        STRING, BYTES
    )


def test_encoding_is_byte_for_byte_the_api_wire_format() -> None:
    request = kms_pb2.DecryptRequest(ciphertext=b"c", uid="u", key_id="k")
    # field 1 bytes "c"; field 2 string "u"; field 3 string "k"
    assert request.SerializeToString() == b"\x0a\x01c\x12\x01u\x1a\x01k"
