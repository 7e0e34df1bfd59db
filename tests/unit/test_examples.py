"""The passphrase StorageClass the manifests install names the example Secret.

The manifests are read as YAML here; their Kubernetes schemas and every StorageClass's
parameters (through the driver's own validation) are checked in tests/integration/deploy.
"""

from pathlib import Path

import yaml

from cryptvol import DRIVER_NAME

ROOT = Path(__file__).resolve().parents[2]
STORAGECLASSES = ROOT / "deploy" / "kubernetes" / "base" / "storageclasses.yaml"
SECRET = ROOT / "docs" / "examples" / "passphrase-secret.yaml"
SECRET_REFS = [
    f"csi.storage.k8s.io/{stage}-secret-{part}"
    for stage in ("provisioner", "node-stage", "node-expand")
    for part in ("name", "namespace")
]


def _passphrase_class():
    classes = {d["metadata"]["name"]: d for d in yaml.safe_load_all(STORAGECLASSES.read_text())}
    return classes["cryptvol-passphrase"]


def _secret():
    return next(d for d in yaml.safe_load_all(SECRET.read_text()) if d["kind"] == "Secret")


def test_the_passphrase_storageclass_names_the_example_secret_and_allows_expansion():
    sc, secret = _passphrase_class(), _secret()
    assert sc["provisioner"] == DRIVER_NAME
    assert sc["allowVolumeExpansion"] is True
    params = sc["parameters"]
    for key in SECRET_REFS:
        assert key in params, key
    assert {params[k] for k in SECRET_REFS if k.endswith("name")} == {secret["metadata"]["name"]}
    assert {params[k] for k in SECRET_REFS if k.endswith("namespace")} == {
        secret["metadata"]["namespace"]
    }
    assert params["secretKey"] in secret["stringData"]

