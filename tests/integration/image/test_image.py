"""cryptvol runs from its own image: the driver, its tools and its Python all come from it.

Each command runs as a container runtime would start it: chrooted into the unpacked root
filesystem with an empty environment, in a private mount namespace with /proc, /sys and /dev
mounted (the DaemonSet's pod has them), so nothing of this host's Python or tools leaks in.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from cryptvol import DRIVER_NAME, __version__
from cryptvol.csi.client import CsiClient, mount_capability
from cryptvol.csi.gen import csi_pb2 as pb

MIB = 1024 * 1024
ENV = ["PATH=/opt/cryptvol/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]


def in_image(root: Path, argv: list[str]) -> list[str]:
    """argv that runs `argv` inside the image, as its pod would."""
    mounts = (f"mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys && "
              f"mount --rbind /dev {root}/dev")
    inner = shlex.join(["env", "-i", *ENV, "chroot", str(root), *argv])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"{mounts} && exec {inner}"]


@pytest.fixture
def served(image_root: Path):
    """`cryptvol serve` from the image; its socket, state and pool live in the image's tree.
    The controller role: this host has no device-mapper, so a node role would never be
    ready (the node half runs in the VM tests)."""
    log = (image_root / "tmp" / "driver.log").open("wb")
    proc = subprocess.Popen(in_image(image_root, [
        "cryptvol", "serve", "--role", "controller", "--node-id", "image-node",
        "--endpoint", "unix:///run/cryptvol/csi.sock",
        "--state-dir", "/var/lib/cryptvol/state", "--pool-dir", "/var/lib/cryptvol/pool",
    ]), stdout=log, stderr=log)
    client = CsiClient(f"unix://{image_root}/run/cryptvol/csi.sock")
    try:
        client.wait_ready(120)
        yield client
    finally:
        client.close()
        proc.terminate()
        code = proc.wait(60)
        log.close()
        assert code == 0, (image_root / "tmp" / "driver.log").read_text()


def test_the_driver_serves_identity_create_and_delete_from_the_image(served, image_root):
    info = served.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DRIVER_NAME, __version__)
    volume = served.controller.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-in-image", capacity_range=pb.CapacityRange(required_bytes=64 * MIB),
        volume_capabilities=[mount_capability("ext4")],
    )).volume
    backing = image_root / "var/lib/cryptvol/pool" / f"{volume.volume_id}.img"
    assert backing.stat().st_size == 64 * MIB + 16 * MIB
    assert volume.accessible_topology[0].segments["cryptvol.io/node"] == "image-node"
    served.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert not backing.exists()


def test_doctor_inside_the_image_reports_the_images_own_cryptsetup(image_root):
    doctor = subprocess.run(in_image(image_root, ["cryptvol", "doctor", "--json"]),
                            capture_output=True, text=True, timeout=300)
    checks = {c["name"]: c["value"] for c in json.loads(doctor.stdout)["checks"]}
    package = subprocess.run(
        ["chroot", str(image_root), "dpkg-query", "-W", "-f", "${Version}", "cryptsetup-bin"],
        capture_output=True, text=True, check=True).stdout
    upstream = package.split(":")[-1].split("-")[0]  # 2:2.6.1-4~deb12u2 -> 2.6.1
    assert checks["cryptsetup"].startswith(upstream + " "), (checks["cryptsetup"], package)
