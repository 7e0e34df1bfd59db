import pytest

from cryptvol.engine.sizes import DEFAULT_BYTES, MIB, capacity_for, minimum_bytes
from cryptvol.errors import InvalidArgument, OutOfRange


def test_no_range_gives_the_default_size():
    assert capacity_for(0, 0, minimum_bytes("ext4")) == DEFAULT_BYTES


def test_required_bytes_round_up_to_whole_mebibytes():
    assert capacity_for(10 * MIB + 1, 0, MIB) == 11 * MIB


def test_a_small_request_is_raised_to_the_filesystem_minimum():
    assert capacity_for(MIB, 0, minimum_bytes("xfs")) == 300 * MIB


def test_a_limit_below_required_is_invalid():
    with pytest.raises(InvalidArgument, match="below required_bytes"):
        capacity_for(10 * MIB, 5 * MIB, MIB)


def test_a_range_that_cannot_hold_the_minimum_is_out_of_range():
    with pytest.raises(OutOfRange, match="at least"):
        capacity_for(MIB, 2 * MIB, minimum_bytes("xfs"))


def test_only_a_limit_gives_the_default_capped_by_it():
    assert capacity_for(0, 100 * MIB, MIB) == 100 * MIB


def test_negative_sizes_are_invalid():
    with pytest.raises(InvalidArgument):
        capacity_for(-1, 0, MIB)
