"""A tiny container orchestrator for tests: the CSI calls kubelet and the sidecars make."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptvol.csi.client import CsiClient, block_capability, mount_capability
from cryptvol.csi.gen import csi_pb2 as pb

MIB = 1024 * 1024


def capability(kind: str) -> pb.VolumeCapability:
    return block_capability() if kind == "block" else mount_capability(kind)


@dataclass
class Volume:
    csi: CsiClient
    volume_id: str
    kind: str  # "ext4", "xfs" or "block"
    staging: Path
    target: Path
    secrets: dict[str, str]

    @property
    def cap(self) -> pb.VolumeCapability:
        return capability(self.kind)

    def stage_request(self) -> pb.NodeStageVolumeRequest:
        return pb.NodeStageVolumeRequest(
            volume_id=self.volume_id,
            staging_target_path=str(self.staging),
            volume_capability=self.cap,
            secrets=self.secrets,
        )

    def publish_request(self, readonly: bool = False) -> pb.NodePublishVolumeRequest:
        return pb.NodePublishVolumeRequest(
            volume_id=self.volume_id,
            staging_target_path=str(self.staging),
            target_path=str(self.target),
            volume_capability=self.cap,
            readonly=readonly,
        )

    def stage(self) -> None:
        self.staging.mkdir(exist_ok=True)
        self.csi.node.NodeStageVolume(self.stage_request())

    def publish(self, readonly: bool = False) -> None:
        self.csi.node.NodePublishVolume(self.publish_request(readonly))

    def unpublish(self) -> None:
        self.csi.node.NodeUnpublishVolume(
            pb.NodeUnpublishVolumeRequest(volume_id=self.volume_id, target_path=str(self.target))
        )

    def unstage(self) -> None:
        self.csi.node.NodeUnstageVolume(
            pb.NodeUnstageVolumeRequest(
                volume_id=self.volume_id, staging_target_path=str(self.staging)
            )
        )

    def expand(self, size: int, secrets: dict[str, str] | None = None) -> int:
        """What kubelet does after the resizer passed the request on: NodeExpandVolume."""
        return int(
            self.csi.node.NodeExpandVolume(
                pb.NodeExpandVolumeRequest(
                    volume_id=self.volume_id,
                    volume_path=str(self.target),
                    staging_target_path=str(self.staging),
                    volume_capability=self.cap,
                    capacity_range=pb.CapacityRange(required_bytes=size),
                    secrets=self.secrets if secrets is None else secrets,
                )
            ).capacity_bytes
        )

    def cycle(self, digest: str) -> None:
        """Unpublish, unstage, stage and publish again; the data must have survived."""
        self.unpublish()
        self.unstage()
        self.stage()
        self.publish()
        assert self.checksum() == digest

    def release(self) -> None:
        """Unpublish and unstage: what kubelet does when the pod goes away."""
        self.unpublish()
        self.unstage()

    def delete(self) -> None:
        self.csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=self.volume_id))

    def write(self, size: int = 2 * MIB, seed: bytes = b"") -> str:
        """Write data to the published volume and return its sha256."""
        payload = (seed or b"cryptvol-test") + os.urandom(size)
        if self.kind == "block":
            with open(self.target, "r+b") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            self._block_len = len(payload)
        else:
            path = self.target / "data.bin"
            path.write_bytes(payload)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        return hashlib.sha256(payload).hexdigest()

    def checksum(self) -> str:
        if self.kind == "block":
            with open(self.target, "rb") as f:
                return hashlib.sha256(f.read(self._block_len)).hexdigest()
        return hashlib.sha256((self.target / "data.bin").read_bytes()).hexdigest()

    def size_seen(self) -> int:
        if self.kind == "block":
            with open(self.target, "rb") as f:
                return f.seek(0, os.SEEK_END)
        st = os.statvfs(self.target)
        return st.f_blocks * st.f_frsize


def create_volume(
    csi: CsiClient,
    work: Path,
    name: str,
    kind: str,
    size: int = 64 * MIB,
    parameters: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    source: pb.VolumeContentSource | None = None,
) -> Volume:
    """CreateVolume as the external-provisioner sends it; with `source`, a copy of that
    snapshot or volume (`from_snapshot`, `from_volume`)."""
    if kind == "xfs":
        size = max(size, 300 * MIB)
    response = csi.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name=name,
            volume_capabilities=[capability(kind)],
            capacity_range=pb.CapacityRange(required_bytes=size),
            parameters=parameters or {},
            secrets=secrets or {},
            volume_content_source=source,
        )
    )
    base = work / name
    base.mkdir(parents=True, exist_ok=True)
    return Volume(
        csi, response.volume.volume_id, kind, base / "staging", base / "target", secrets or {}
    )


def from_snapshot(snapshot_id: str) -> pb.VolumeContentSource:
    return pb.VolumeContentSource(
        snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


def from_volume(volume_id: str) -> pb.VolumeContentSource:
    return pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=volume_id))


def create_snapshot(csi: CsiClient, name: str, volume_id: str) -> pb.Snapshot:
    """CreateSnapshot as the csi-snapshotter sends it."""
    return csi.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(name=name, source_volume_id=volume_id)
    ).snapshot
