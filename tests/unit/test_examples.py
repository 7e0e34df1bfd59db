"""The deployment examples (docs/, deploy/, and the one the demo prints) are valid for the
driver: the passphrase StorageClass names the example Secret, the KMS overlay's
EncryptionConfiguration and static pod name the plugin's real socket and flags.

The manifests are read as YAML here; their Kubernetes schemas and every StorageClass's
parameters (through the driver's own validation) are checked in tests/integration/deploy.
"""

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from cryptvol import DRIVER_NAME
from cryptvol.engine.direct import ANNOTATION
from cryptvol.engine.parameters import parse_parameters, parse_snapshot_parameters
from cryptvol.mounts.kata_defaults import RUNTIME_HANDLERS
from cryptvol.pools.registry import known_kinds, parse_pool_spec

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



KMS_CONFIG = ROOT / "deploy" / "kubernetes" / "overlays" / "kms" / "encryption-configuration.yaml"
KMS_POD = ROOT / "deploy" / "kubernetes" / "overlays" / "kms" / "kms-plugin.yaml"


def test_the_encryption_configuration_uses_the_kms_v2_plugin_for_secrets():
    from cryptvol.cli.kms import DEFAULT_LISTEN
    from cryptvol.rpc.endpoint import socket_path

    doc = yaml.safe_load(KMS_CONFIG.read_text())
    assert (doc["apiVersion"], doc["kind"]) == (
        "apiserver.config.k8s.io/v1", "EncryptionConfiguration"
    )
    (rule,) = doc["resources"]
    assert rule["resources"] == ["secrets"]
    first, last = rule["providers"]
    kms = first["kms"]
    assert kms["apiVersion"] == "v2"
    assert kms["name"] and ":" not in kms["name"]  # the apiserver refuses ':' in v2 names
    assert "cachesize" not in kms  # a v1-only field: v2 configurations refuse it
    assert kms["endpoint"] == DEFAULT_LISTEN
    socket_path(kms["endpoint"])  # the plugin accepts it as --listen
    assert kms["timeout"].endswith("s") and 0 < float(kms["timeout"][:-1]) <= 10
    assert last == {"identity": {}}  # Secrets from before encryption still read


def test_the_static_pod_runs_the_plugin_on_the_configured_socket_with_real_flags():
    from cryptvol.cli.kms import serve_command

    pod = yaml.safe_load(KMS_POD.read_text())
    (container,) = pod["spec"]["containers"]
    # The image's entrypoint is the cryptvol command (deploy/image/build.sh): args follow it.
    command = container["args"]
    assert command[:2] == ["kms", "serve"]
    known = {opt for p in serve_command.params for opt in (*p.opts, *p.secondary_opts)}
    flags = dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in command[2:])
    assert set(flags) <= known, set(flags) - known
    endpoint = yaml.safe_load(KMS_CONFIG.read_text())["resources"][0]["providers"][0]["kms"][
        "endpoint"
    ]
    assert flags["--listen"] == endpoint
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"]}
    socket_dir = str(Path(endpoint.removeprefix("unix://")).parent)
    assert socket_dir in mounts.values()
    assert host[next(n for n, p in mounts.items() if p == socket_dir)] == socket_dir
    for flag in ("--root-key", "--etcd-ca-file", "--etcd-cert-file", "--etcd-key-file"):
        assert any(flags[flag].startswith(p + "/") for p in mounts.values()), flag


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


KATA_EXAMPLE = ROOT / "docs" / "examples" / "kata-direct.yaml"
BASE = ROOT / "deploy" / "kubernetes" / "base"


def _base(name: str, kind: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d["kind"] == kind]


def test_the_kata_example_and_the_manifests_wire_all_three_triggers_and_their_rbac():
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(KATA_EXAMPLE.read_text())}
    (driver,) = _base("csidriver.yaml", "CSIDriver")
    assert driver["metadata"]["name"] == DRIVER_NAME
    assert driver["spec"]["podInfoOnMount"] is True
    kata_class = next(c for c in _base("storageclasses.yaml", "StorageClass")
                      if c["parameters"].get("kataDirectVolume") == "true")
    assert parse_parameters(kata_class["parameters"]).kata_direct
    assert docs["PersistentVolumeClaim"]["metadata"]["annotations"][ANNOTATION] == "true"
    pod = docs["Pod"]["spec"]
    runtime_class = docs["RuntimeClass"]
    assert pod["runtimeClassName"] == runtime_class["metadata"]["name"]
    assert any(fnmatch.fnmatchcase(runtime_class["handler"], p) for p in RUNTIME_HANDLERS)
    assert all("subPath" not in m for c in pod["containers"] for m in c["volumeMounts"])
    granted = {(g, r) for role in _base("rbac.yaml", "ClusterRole") for rule in role["rules"]
               if "get" in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted >= {("", "persistentvolumeclaims"), ("", "pods"),
                       ("node.k8s.io", "runtimeclasses")}


def test_each_pool_component_configures_the_pool_its_storageclass_names():
    for component in ("pool-zfs", "pool-lvmthin"):
        folder = ROOT / "deploy" / "kubernetes" / "components" / component
        sc = yaml.safe_load((folder / "storageclass.yaml").read_text())
        assert sc["provisioner"] == DRIVER_NAME and sc["allowVolumeExpansion"] is True
        parsed = parse_parameters({k: str(v) for k, v in sc["parameters"].items()})
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        (arg,) = [p["value"] for patch in kustomization["patches"]
                  for p in yaml.safe_load(patch["patch"])]
        spec = parse_pool_spec(arg.removeprefix("--pool="))
        assert (spec.name, spec.kind) == (parsed.pool, component.removeprefix("pool-"))


POOL_EXAMPLES = {"loop": "loop-pool.yaml", "lvmthin": "lvmthin-pool.yaml", "zfs": "zfs-pool.yaml"}
_SERVE_POOL = re.compile(r"^#\s+cryptvol serve --pool (\S+)$", re.MULTILINE)


@pytest.mark.parametrize("kind", sorted(POOL_EXAMPLES))
def test_each_pool_kind_has_a_storage_class_and_a_snapshot_class_for_its_pool(kind):
    text = (ROOT / "docs" / "examples" / POOL_EXAMPLES[kind]).read_text()
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
