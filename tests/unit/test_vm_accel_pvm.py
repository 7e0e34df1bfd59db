"""A /dev/kvm served only by PVM is known unusable for the VM's Debian kernel, without a
probe boot (which costs 20 s on a fresh machine and ends in QEMU failing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptvol.vm.accel import pvm_only


def _modules(root: Path, *names: str) -> Path:
    for name in names:
        (root / name / "parameters").mkdir(parents=True)
    return root


def test_a_kvm_served_by_pvm_alone_is_recognised(tmp_path: Path) -> None:
    assert pvm_only(_modules(tmp_path, "kvm", "kvm_pvm"))


@pytest.mark.parametrize("hardware", ["kvm_intel", "kvm_amd"])
def test_a_kvm_with_hardware_virtualization_is_left_to_the_probe(
    tmp_path: Path, hardware: str
) -> None:
    assert not pvm_only(_modules(tmp_path, "kvm", hardware))
    assert not pvm_only(_modules(tmp_path / "both", "kvm", "kvm_pvm", hardware))


def test_no_kvm_module_at_all_is_not_pvm(tmp_path: Path) -> None:
    assert not pvm_only(_modules(tmp_path, "loop"))
