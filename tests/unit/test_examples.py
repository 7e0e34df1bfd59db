"""The deployment examples in docs/ are valid for the driver they document.

There is no API server here: the manifests are checked by parsing them and feeding the
StorageClass parameters through the driver's own validation, which is the part cryptvol
owns; the Kubernetes schema itself is checked by field names only.
"""

from pathlib import Path

import yaml

from cryptvol import DRIVER_NAME
from cryptvol.engine.parameters import parse_parameters
from cryptvol.pools.registry import open_pools, parse_pool_spec

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


def test_the_zfs_storageclass_names_the_pool_its_comment_configures():
    text = (EXAMPLE.parent / "zfs-storageclass.yaml").read_text()
    sc = yaml.safe_load(text)
    assert sc["provisioner"] == DRIVER_NAME and sc["allowVolumeExpansion"] is True
    parsed = parse_parameters({k: str(v) for k, v in sc["parameters"].items()})
    spec_text = text.split("--pool ", 1)[1].split()[0]
    spec = parse_pool_spec(spec_text)
    assert (spec.name, spec.kind) == (parsed.pool, "zfs")
    assert open_pools([spec]).get(parsed.pool).location == "tank/cryptvol"
