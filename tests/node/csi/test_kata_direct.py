"""Kata direct-assigned volumes on real dm-crypt: the node decrypts, the guest mounts.

No Kata sandbox or Kubernetes API server can run here: the session driver reads a stand-in
API on loopback (tests/support/kube_api.py) and talks to a stand-in shim on a unix socket
(tests/support/kata_shim.py), both serving the real objects' and routes' shapes. The test
plays Kata's part where Kata would act: it finds the folder by decoding its name the way
Kata encodes it, records a sandbox with an empty file, and mounts the named device with the
named filesystem type, as Kata's guest agent does.
"""

import base64
import hashlib
import json
import os
import stat
import subprocess

import grpc
import pytest

from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.keys.manager import open_local
from cryptvol.luks.cryptsetup import mapping_name, mapping_path
from cryptvol.system.devices import device_size
from support.co import MIB, create_volume
from support.kata_shim import FakeShim

SANDBOX = "5d1c0ffee" + "0" * 55  # a 64-character sandbox id, as containerd makes them


def _publish(vol, target, pod=None, group="", readonly=False):
    cap = vol.cap
    cap.mount.volume_mount_group = group
    context = {}
    if pod is not None:
        context = {"csi.storage.k8s.io/pod.name": pod, "csi.storage.k8s.io/pod.namespace": "apps",
                   "csi.storage.k8s.io/ephemeral": "false"}
    vol.csi.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=vol.volume_id, staging_target_path=str(vol.staging), target_path=str(target),
        volume_capability=cap, readonly=readonly, volume_context=context))


def _unpublish(vol, target):
    vol.csi.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=vol.volume_id, target_path=str(target)))


def _refused(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _device(vol):
    return str(mapping_path(mapping_name(vol.volume_id)))


def _host_mounts_of(device):
    real = os.path.realpath(device)
    with open("/proc/self/mountinfo") as f:
        sources = [line.split(" - ")[1].split()[1] for line in f]
    return [s for s in sources if s.startswith("/") and os.path.realpath(s) == real]


def _kata_reads(kata, target):
    """The folder and mountInfo.json of `target`, found as Kata finds them."""
    names = [n for n in os.listdir(kata.volumes.root)
             if base64.urlsafe_b64decode(n).decode() == str(target)]
    assert names == [base64.urlsafe_b64encode(str(target).encode()).decode()]
    folder = kata.volumes.root / names[0]
    return folder, json.loads((folder / "mountInfo.json").read_bytes())


def _guest_mount(info, mnt):
    """What Kata's agent does with a direct volume: mount the device with its fstype."""
    argv = ["mount", "-t", info["fstype"]]
    if info.get("options"):
        argv += ["-o", ",".join(info["options"])]
    subprocess.run([*argv, info["device"], str(mnt)], check=True)


def _expand(vol, target, size):
    return vol.csi.node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
        volume_id=vol.volume_id, volume_path=str(target),
        capacity_range=pb.CapacityRange(required_bytes=size))).capacity_bytes


def _stats(vol, target):
    stats = vol.csi.node.NodeGetVolumeStats(
        pb.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=str(target)))
    return {u.unit: u for u in stats.usage}[pb.VolumeUsage.BYTES]


def test_a_kata_pod_gets_the_decrypted_device_with_what_a_host_pod_wrote(csi, kata, tmp_path):
    kata.api.add_pod("apps", "runc-pod")
    kata.api.add_pod("apps", "kata-pod", runtime_class="kata", fs_group=2000,
                     fs_group_change_policy="OnRootMismatch")
    kata.api.add_pod("apps", "kata-pod-2", runtime_class="kata")
    kata.api.add_runtime_class("kata", "kata-qemu")
    vol = create_volume(csi, tmp_path, "kata-rc", "ext4")
    vol.stage()
    _publish(vol, vol.target, pod="runc-pod")  # an ordinary pod: a host mount
    digest = vol.write(seed=b"written-by-a-host-pod")
    _unpublish(vol, vol.target)

    target = tmp_path / "kata-rc" / "kata-target"
    _publish(vol, target, pod="kata-pod", group="2000")
    _publish(vol, target, pod="kata-pod", group="2000")  # kubelet retries: same answer
    device = _device(vol)
    assert _host_mounts_of(device) == []  # not even the staging mount
    assert target.is_dir() and os.listdir(target) == []
    folder, info = _kata_reads(kata, target)
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(folder / "mountInfo.json").st_mode) == 0o600
    assert info == {"volume-type": "block", "device": device, "fstype": "ext4",
                    "metadata": {"fsGroup": "2000", "fsGroupChangePolicy": "OnRootMismatch"}}
    mnt = tmp_path / "guest"
    mnt.mkdir()
    _guest_mount(info, mnt)
    try:
        assert hashlib.sha256((mnt / "data.bin").read_bytes()).hexdigest() == digest
    finally:
        subprocess.run(["umount", str(mnt)], check=True)

    # One pod at a time: neither a second Kata pod nor an ordinary one gets it meanwhile.
    second = _refused(lambda: _publish(vol, tmp_path / "kata-rc" / "t2", pod="kata-pod-2"))
    assert second.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "one pod at a time" in second.details()
    host = _refused(lambda: _publish(vol, vol.target, pod="runc-pod"))
    assert host.code() == grpc.StatusCode.FAILED_PRECONDITION

    _unpublish(vol, target)
    _unpublish(vol, target)
    assert not folder.exists() and not target.exists()
    _publish(vol, vol.target, pod="runc-pod")  # the staging mount comes back
    assert vol.checksum() == digest
    vol.release()
    vol.delete()


def test_a_class_direct_volume_stays_off_the_host_survives_a_crash_and_asks_the_shim(
        driver, kata, tmp_path):
    vol = create_volume(driver.client, tmp_path, "kata-sc", "ext4",
                        parameters={"kataDirectVolume": "true"})
    vol.stage()
    device = _device(vol)
    assert not os.path.ismount(vol.staging) and _host_mounts_of(device) == []
    fs = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert fs == "ext4"  # made on the blank mapping, for the guest to mount

    # Killed right after mountInfo.json is in place: the retry converges.
    vol.csi = driver.restart(failpoints="kata:after-mountinfo")
    killed = _refused(lambda: _publish(vol, vol.target, readonly=True))
    assert killed.code() == grpc.StatusCode.UNAVAILABLE
    assert driver.wait_killed() == -9
    vol.csi = driver.restart()
    _publish(vol, vol.target, readonly=True)
    folder, info = _kata_reads(kata, vol.target)
    assert info == {"volume-type": "block", "device": device, "fstype": "ext4",
                    "options": ["ro"]}
    assert os.listdir(folder) == ["mountInfo.json"]

    messages = []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "kata-sc" / "evil").symlink_to(elsewhere)
    hostile = _refused(lambda: _publish(vol, tmp_path / "kata-sc" / "evil" / "mount"))
    assert hostile.code() == grpc.StatusCode.INVALID_ARGUMENT  # a symlink is never followed
    assert os.listdir(elsewhere) == []
    messages.append(hostile.details())

    # No sandbox yet: the device's size; Kata records one, but its shim is not up: the same.
    assert _stats(vol, vol.target).total == device_size(device)
    (folder / SANDBOX).write_bytes(b"")
    assert _expand(vol, vol.target, 96 * MIB) >= 96 * MIB
    assert _stats(vol, vol.target).total == device_size(device)

    shim = FakeShim(kata.go_sandboxes, SANDBOX, device)
    try:
        assert _stats(vol, vol.target).used == 5 * MIB  # the guest's figures
        grown = _expand(vol, vol.target, 128 * MIB)
        assert shim.resizes()[-1] == {"VolumePath": device, "Size": device_size(device)}
        assert grown == device_size(device) >= 128 * MIB
        shim.refuse_resize = "resize_volume is not implemented in kata-agent"
        refused = _refused(lambda: _expand(vol, vol.target, 160 * MIB))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not implemented in kata-agent" in refused.details()
        messages.append(refused.details())
        shim.refuse_resize = ""
        assert _expand(vol, vol.target, 160 * MIB) >= 160 * MIB  # the retry converges
    finally:
        shim.stop()

    mount_info = (folder / "mountInfo.json").read_bytes()
    _unpublish(vol, vol.target)
    assert not folder.exists() and not vol.target.exists()
    store, keys = open_local(driver.state_dir)
    try:
        dek = keys.get_dek(vol.volume_id).reveal()
    finally:
        store.close()
    haystack = mount_info + "\n".join(driver.log_lines() + messages).encode()
    for form in (dek, dek.hex().encode(), base64.b64encode(dek)):
        assert form not in haystack
    vol.unstage()
    vol.delete()
