"""The deployment examples in docs/ are valid for the driver they document.

There is no API server here: the manifests are checked by parsing them and feeding the
StorageClass parameters through the driver's own validation, which is the part cryptvol
owns; the Kubernetes schema itself is checked by field names only.
"""

import re
from pathlib import Path

import pytest
import yaml

from cryptvol import DRIVER_NAME
from cryptvol.engine.parameters import parse_parameters, parse_snapshot_parameters
from cryptvol.pools.registry import known_kinds

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "passphrase-storageclass.yaml"
SECRET_REFS = [
    f"csi.storage.k8s.io/{stage}-secret-{part}"
    for stage in ("provisioner", "node-stage", "node-expand")
    for part in ("name", "namespace")
]


def _documents():
    return {doc["kind"]: doc for doc in yaml.safe_load_all(EXAMPLE.read_text())}


def test_the_passphrase_storageclass_names_every_secret_and_allows_expansion():
    docs = _documents()
    sc = docs["StorageClass"]
    assert sc["provisioner"] == DRIVER_NAME
    assert sc["allowVolumeExpansion"] is True
    params = sc["parameters"]
    for key in SECRET_REFS:
        assert key in params, key
    secret = docs["Secret"]
    assert {params[k] for k in SECRET_REFS if k.endswith("name")} == {secret["metadata"]["name"]}
    assert {params[k] for k in SECRET_REFS if k.endswith("namespace")} == {
        secret["metadata"]["namespace"]
    }
    assert params["secretKey"] in secret["stringData"]


def test_the_storageclass_parameters_pass_the_drivers_validation():
    params = _documents()["StorageClass"]["parameters"]
    # The external-provisioner strips the secret references before CreateVolume.
    parsed = parse_parameters({k: str(v) for k, v in params.items() if k not in SECRET_REFS})
    assert parsed.key_source == "secret"
    assert parsed.luks.pbkdf == "argon2id"


POOL_EXAMPLES = {"loop": "loop-pool.yaml", "lvmthin": "lvmthin-pool.yaml", "zfs": "zfs-pool.yaml"}
_SERVE_POOL = re.compile(r"^#\s+cryptvol serve --pool (\S+)$", re.MULTILINE)


@pytest.mark.parametrize("kind", sorted(POOL_EXAMPLES))
def test_each_pool_kind_has_a_storage_class_and_a_snapshot_class_for_its_pool(kind):
    text = (EXAMPLE.parent / POOL_EXAMPLES[kind]).read_text()
    docs = list(yaml.safe_load_all(text))
    by_kind = {doc["kind"]: doc for doc in docs}
    # The comment says how the driver serves the pool the StorageClass names.
    name, _, rest = _SERVE_POOL.search(text).group(1).partition("=")
    assert rest.split(":", 1)[0] == kind
    sc = by_kind["StorageClass"]
    assert sc["provisioner"] == DRIVER_NAME and sc["allowVolumeExpansion"] is True
    assert sc["parameters"]["pool"] == name
    parse_parameters({k: str(v) for k, v in sc["parameters"].items()})
    snapshot_class = by_kind["VolumeSnapshotClass"]
    assert snapshot_class["apiVersion"] == "snapshot.storage.k8s.io/v1"
    assert snapshot_class["driver"] == DRIVER_NAME
    assert snapshot_class["deletionPolicy"] in ("Delete", "Retain")
    parse_snapshot_parameters(snapshot_class.get("parameters") or {})
    for claim in (d for d in docs if d["kind"] == "PersistentVolumeClaim"):
        assert claim["spec"]["storageClassName"] == sc["metadata"]["name"]
        assert claim["spec"]["dataSource"]["kind"] in ("VolumeSnapshot",
                                                       "PersistentVolumeClaim")


def test_every_pool_kind_the_driver_knows_has_an_example():
    assert set(known_kinds()) <= set(POOL_EXAMPLES)
