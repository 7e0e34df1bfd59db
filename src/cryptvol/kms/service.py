"""The KeyManagementService (package v2): Status, Encrypt, Decrypt.

Requests are checked against what kube-apiserver itself enforces, so a caller that is not
the apiserver gets the same answer the apiserver would give: key ids and ciphertexts up to
1 kB, annotation keys that are fully qualified domain names, annotations under 32 kB.
"""

from __future__ import annotations

import re

import grpc

from cryptvol.errors import InvalidArgument
from cryptvol.keys.sealed import MAX_CIPHERTEXT, Sealer
from cryptvol.kms.gen import kms_pb2, kms_pb2_grpc
from cryptvol.system.secret import Secret

API_VERSION = "v2"
MAX_KEY_ID = 1024
MAX_ANNOTATIONS = 32 * 1024
# RFC 1123 subdomain with at least two labels, as the apiserver's IsFullyQualifiedDomainName.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_FQDN = re.compile(rf"{_LABEL}(\.{_LABEL})+")


def _check_annotations(annotations: dict[str, bytes]) -> None:
    total = 0
    for name, value in annotations.items():
        if len(name) > 253 or not _FQDN.fullmatch(name):
            raise InvalidArgument(
                f"annotation key {name[:64]!r} is not a fully qualified domain name"
            )
        total += len(name) + len(value)
    if total > MAX_ANNOTATIONS:
        raise InvalidArgument(
            f"the annotations are {total} bytes; keys and values together must be at most"
            f" {MAX_ANNOTATIONS}"
        )


class KmsServicer(kms_pb2_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer

    def Status(self, request: kms_pb2.StatusRequest,
               context: grpc.ServicerContext) -> kms_pb2.StatusResponse:
        health = self.sealer.health()
        return kms_pb2.StatusResponse(
            version=API_VERSION, healthz="ok" if health.ok else health.reason,
            key_id=health.key_id,
        )

    def Encrypt(self, request: kms_pb2.EncryptRequest,
                context: grpc.ServicerContext) -> kms_pb2.EncryptResponse:
        # The plaintext's bounds are the sealing format's: `seal` checks them.
        sealed = self.sealer.encrypt(Secret(request.plaintext))
        return kms_pb2.EncryptResponse(
            ciphertext=sealed.ciphertext, key_id=sealed.key_id, annotations=sealed.annotations
        )

    def Decrypt(self, request: kms_pb2.DecryptRequest,
                context: grpc.ServicerContext) -> kms_pb2.DecryptResponse:
        if not request.ciphertext:
            raise InvalidArgument("the ciphertext is empty")
        if len(request.ciphertext) > MAX_CIPHERTEXT:
            raise InvalidArgument(
                f"the ciphertext is {len(request.ciphertext)} bytes; at most {MAX_CIPHERTEXT}"
            )
        if not request.key_id:
            raise InvalidArgument("the key_id is empty; pass the one Encrypt returned")
        if len(request.key_id) > MAX_KEY_ID:
            raise InvalidArgument(
                f"the key_id is {len(request.key_id)} bytes; at most {MAX_KEY_ID}"
            )
        annotations = dict(request.annotations)
        _check_annotations(annotations)
        plaintext = self.sealer.decrypt(request.ciphertext, request.key_id, annotations)
        return kms_pb2.DecryptResponse(plaintext=plaintext.reveal())
