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
    ],
)
def test_bad_parameters_are_refused_naming_the_key(params, names):
    with pytest.raises(InvalidArgument, match=names):
        parse_parameters(params)
