import pytest

from cryptvol.engine.parameters import parse_parameters
from cryptvol.errors import InvalidArgument


def test_defaults_are_ext4_and_managed_keys():
    params = parse_parameters({})
    assert params.fs_type == "ext4"
    assert params.key_source == "managed"


def test_claim_metadata_from_the_provisioner_is_accepted_and_not_kept():
    params = parse_parameters(
        {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pv/name": "pv-1"}
    )
    assert params.raw == {}


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"keysize": "512"}, "'keysize'"),
        ({"csi.storage.k8s.io/fstype": "btrfs"}, "accepted values: ext4, xfs"),
        ({"keySource": "vault"}, "accepted values: managed, secret"),
        ({"cipher": "rot13"}, "'cipher'"),
        ({"keySize": "128"}, "'keySize'"),
        ({"kataDirectVolume": "yes"}, "accepted values: true, false"),
    ],
)
def test_bad_parameters_are_refused_naming_the_key(params, names):
    with pytest.raises(InvalidArgument, match=names):
        parse_parameters(params)


def test_a_class_makes_its_volumes_kata_direct_with_kata_direct_volume_true():
    assert parse_parameters({"kataDirectVolume": "true"}).kata_direct
    assert not parse_parameters({"kataDirectVolume": "false"}).kata_direct
    assert not parse_parameters({}).kata_direct
