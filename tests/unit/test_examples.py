"""The deployment examples in docs/ (and the one the demo prints) are valid for the driver.

There is no API server here: the manifests are checked by parsing them and feeding the
StorageClass parameters through the driver's own validation, which is the part cryptvol
owns; the Kubernetes schema itself is checked by field names only.
"""

from pathlib import Path

import yaml

from cryptvol import DRIVER_NAME
from cryptvol.engine.parameters import parse_parameters

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


def test_the_demos_storageclass_asks_for_what_the_demo_made():
    from cryptvol.cli.demo import SIZE_MIB, demo_parameters, storage_class_yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all(storage_class_yaml(demo_parameters(),
                                                                          SIZE_MIB))}
    sc, claim = docs["StorageClass"], docs["PersistentVolumeClaim"]
    assert sc["provisioner"] == DRIVER_NAME
    assert sc["parameters"] == demo_parameters()
    assert parse_parameters(sc["parameters"]).key_source == "managed"
    assert claim["spec"]["storageClassName"] == sc["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == f"{SIZE_MIB}Mi"
