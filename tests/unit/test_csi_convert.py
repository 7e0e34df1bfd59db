"""volume_mount_group (a pod's fsGroup) is accepted as a group id and nothing else."""

import pytest

from cryptvol.csi import convert
from cryptvol.csi.client import mount_capability
from cryptvol.errors import InvalidArgument


def _with_group(group):
    cap = mount_capability("ext4")
    cap.mount.volume_mount_group = group
    return cap


def test_a_group_id_is_carried_to_the_engine():
    assert convert.capability(_with_group("2000")).mount_group == "2000"
    assert convert.capability(_with_group("")).mount_group == ""


@pytest.mark.parametrize("group", ["-1", "wheel", "4294967295", "\uff11\uff12", "12 "])
def test_anything_but_a_group_id_is_invalid(group):
    with pytest.raises(InvalidArgument, match="not a group id"):
        convert.capability(_with_group(group))
