"""Node RPCs act only on what belongs to their volume: another volume's staging path,
target or mount is refused, and nothing of either volume is touched.

The host suite (tests/integration/csi/test_bad_input.py) tries symlinks, `..`, relative
paths, paths outside kubelet's dir, regular files and strangers' mounts on every node RPC;
this one needs two really staged volumes."""

import subprocess

import grpc

from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.mounts.mountinfo import mount_at
from support.co import MIB, capability, create_volume


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_another_volumes_paths_are_refused_and_both_volumes_keep_working(csi, tmp_path):
    a = create_volume(csi, tmp_path, "own-a", "ext4")
    b = create_volume(csi, tmp_path, "own-b", "block", size=32 * MIB)
    a.stage()
    a.publish()
    digest = a.write()
    b.stage()
    b.publish()
    a_mounts = (mount_at(str(a.staging)), mount_at(str(a.target)))
    node = csi.node
    FP, EXISTS, OK = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
                      grpc.StatusCode.OK)

    def publish(vol, target, readonly=False):
        return lambda: node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=str(vol.staging),
            target_path=str(target), volume_capability=capability(vol.kind),
            readonly=readonly))

    tried = {
        # Seen: unstaging B with A's staging path unmounted A.
        "unstage B at A's staging path": (lambda: node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(volume_id=b.volume_id,
                                        staging_target_path=str(a.staging))), FP),
        "stage B at A's staging path": (lambda: node.NodeStageVolume(
            pb.NodeStageVolumeRequest(volume_id=b.volume_id, staging_target_path=str(a.staging),
                                      volume_capability=capability("block"))), FP),
        # Seen: publishing onto a target holding another mount said OK.
        "publish B onto A's target": (publish(b, a.target), EXISTS),
        "publish A onto B's target": (publish(a, b.target), EXISTS),
        "unpublish B at A's target": (lambda: node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=b.volume_id,
                                          target_path=str(a.target))), FP),
        "unpublish A at B's target": (lambda: node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=a.volume_id,
                                          target_path=str(b.target))), FP),
        "stats of B at A's target": (lambda: node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=b.volume_id, volume_path=str(a.target))), FP),
        "expand B at A's target": (lambda: node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
            volume_id=b.volume_id, volume_path=str(a.target),
            capacity_range=pb.CapacityRange(required_bytes=48 * MIB))), FP),
        # Seen: unstaging a published volume unmounted its staging path, then failed.
        "unstage A while it is published": (a.unstage, FP),
        "publish A again as it is": (publish(a, a.target), OK),
        "publish A again read-only": (publish(a, a.target, readonly=True), EXISTS),
    }
    wrong = {what: code for what, (call, want) in tried.items()
             if (code := code_of(call)) != want}
    assert not wrong
    assert (mount_at(str(a.staging)), mount_at(str(a.target))) == a_mounts
    assert a.checksum() == digest
    assert b.size_seen() == 32 * MIB
    # An unpublish cut short after its unmount (a crash): the retry removes the empty
    # directory or the empty file the publish made, and only that.
    for vol in (a, b):
        subprocess.run(["umount", str(vol.target)], check=True)
        vol.unpublish()
        assert not vol.target.exists()
        vol.unstage()
        vol.delete()
