"""Every rendered object is valid Kubernetes, checked offline against the OpenAPI schemas
that kubernetes-validate bundles, for the two newest minor versions it knows (strict: an
unknown or misspelt field is an error). Kinds outside the core API (the snapshot CRDs, the
apiserver's EncryptionConfiguration file) are checked against the fields their own
references define."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from support.manifests import KUBERNETES, KUSTOMIZATIONS

# Not in the bundled schemas: the external-snapshotter's CRD (snapshot.storage.k8s.io/v1,
# client/config/crd in kubernetes-csi/external-snapshotter v8.6.0): its fields.
VOLUME_SNAPSHOT_CLASS_FIELDS = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy",
                                "parameters"}


def newest_minor_versions(count: int = 2) -> list[str]:
    minors = {tuple(int(p) for p in v.split(".")[:2]) for v in all_versions()}
    return [f"{major}.{minor}.0" for major, minor in sorted(minors)[-count:]]


VERSIONS = newest_minor_versions()


def test_two_kubernetes_versions_are_checked():
    assert len(VERSIONS) == 2 and VERSIONS[0] != VERSIONS[1]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates(rendered, kustomization, version):
    objects = rendered[kustomization]
    assert objects, f"{kustomization} renders nothing"
    for obj in objects:
        if obj["kind"] == "VolumeSnapshotClass":
            assert obj["apiVersion"] == "snapshot.storage.k8s.io/v1"
            assert set(obj) <= VOLUME_SNAPSHOT_CLASS_FIELDS, set(obj) - VOLUME_SNAPSHOT_CLASS_FIELDS
            assert obj["deletionPolicy"] in ("Delete", "Retain")
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_encryption_configuration_uses_the_kms_v2_plugin_with_identity_last(rendered):
    """kube-apiserver's config file (apiserver.config.k8s.io/v1): KMS v2 takes apiVersion,
    name, endpoint and timeout (no cachesize); identity reads what was written before."""
    config = yaml.safe_load((KUBERNETES / "overlays/kms/encryption-configuration.yaml")
                            .read_text())
    assert (config["apiVersion"], config["kind"]) == (
        "apiserver.config.k8s.io/v1", "EncryptionConfiguration")
    assert set(config) == {"apiVersion", "kind", "resources"}
    [entry] = config["resources"]
    assert entry["resources"] == ["secrets"]
    kms, identity = entry["providers"]
    assert identity == {"identity": {}}
    assert set(kms["kms"]) == {"apiVersion", "name", "endpoint", "timeout"}
    assert kms["kms"]["apiVersion"] == "v2"
    [pod] = rendered["overlays/kms"]
    listen = next(a for a in pod["spec"]["containers"][0]["args"] if a.startswith("--listen="))
    assert listen == "--listen=" + kms["kms"]["endpoint"]
