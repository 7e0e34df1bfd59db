"""CSI size limits: a request beyond them is refused naming the field, never quoting it."""

from __future__ import annotations

import pytest

from cryptvol.csi.bounds import check_request
from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.errors import InvalidArgument, quoted

BIG = "x" * (1 << 20)


@pytest.mark.parametrize(("request_", "field"), [
    (pb.CreateVolumeRequest(name=BIG), "name"),
    (pb.CreateVolumeRequest(name="n", parameters={"k" * 8192: "v"}), "a key of parameters"),
    (pb.CreateVolumeRequest(name="n", parameters={f"k{i}": "v" * 100 for i in range(50)}),
     "parameters holds"),
    (pb.CreateVolumeRequest(name="n", secrets={"k" * 200: "v"}), "a key of secrets"),
    (pb.CreateVolumeRequest(name="n", secrets={"a b": "v"}), "a key of secrets"),
    (pb.DeleteVolumeRequest(volume_id="v" * 65536), "volume_id"),
    (pb.NodePublishVolumeRequest(volume_id="v", target_path="/" + "p" * 5000), "target_path"),
    (pb.NodeStageVolumeRequest(volume_id="v", volume_capability=mount_capability(
        "ext4", flags=("o" * 200,))), "volume_capability.mount.mount_flags"),
    (pb.ListVolumesRequest(starting_token=BIG), "starting_token"),
])
def test_a_field_beyond_its_limit_is_refused_by_name(request_, field) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_request(request_)
    assert str(info.value).startswith(field)
    assert len(str(info.value)) < 200


def test_fields_within_the_limits_pass() -> None:
    check_request(pb.CreateVolumeRequest(
        name="n" * 128, parameters={"csi.storage.k8s.io/fstype": "ext4"},
        secrets={"passphrase": "s" * 10000}, volume_capabilities=[mount_capability("ext4")]))
    check_request(pb.NodePublishVolumeRequest(volume_id="v", target_path="/" + "p" * 1000,
                                              volume_context={"k": "v" * 10000}))


def test_quoted_input_is_at_most_128_characters_of_it() -> None:
    assert quoted("abc") == "'abc'"
    shown = quoted(BIG)
    assert len(shown) < 128 + 40
    assert shown.endswith(f"({len(BIG)} characters)")
