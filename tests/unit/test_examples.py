"""The deployment examples in docs/ are valid for the driver they document.

There is no API server here: the manifests are checked by parsing them and feeding the
StorageClass parameters through the driver's own validation, which is the part cryptvol
owns; the Kubernetes schema itself is checked by field names only.
"""

import fnmatch
from pathlib import Path

import yaml

from cryptvol import DRIVER_NAME
from cryptvol.engine.direct import ANNOTATION, DEFAULT_RUNTIME_HANDLERS
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


KATA_EXAMPLE = EXAMPLE.parent / "kata-direct.yaml"


def test_the_kata_example_wires_all_three_triggers_and_the_rbac_they_need():
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(KATA_EXAMPLE.read_text())}
    assert docs["CSIDriver"]["metadata"]["name"] == DRIVER_NAME
    assert docs["CSIDriver"]["spec"]["podInfoOnMount"] is True
    assert parse_parameters(docs["StorageClass"]["parameters"]).kata_direct
    assert docs["PersistentVolumeClaim"]["metadata"]["annotations"][ANNOTATION] == "true"
    pod = docs["Pod"]["spec"]
    runtime_class = docs["RuntimeClass"]
    assert pod["runtimeClassName"] == runtime_class["metadata"]["name"]
    assert any(fnmatch.fnmatchcase(runtime_class["handler"], p) for p in DEFAULT_RUNTIME_HANDLERS)
    assert all("subPath" not in m for c in pod["containers"] for m in c["volumeMounts"])
    granted = {(g, r) for rule in docs["ClusterRole"]["rules"] if "get" in rule["verbs"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted >= {("", "persistentvolumeclaims"), ("", "pods"),
                       ("node.k8s.io", "runtimeclasses")}
