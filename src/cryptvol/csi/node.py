"""The CSI Node service: validates each request, calls the engine, shapes the answer."""

from __future__ import annotations

import grpc

from cryptvol import TOPOLOGY_KEY
from cryptvol.csi import convert
from cryptvol.csi.bounds import bounded
from cryptvol.csi.gen import csi_pb2, csi_pb2_grpc
from cryptvol.engine.capabilities import check_capabilities
from cryptvol.engine.node import NodeEngine
from cryptvol.engine.types import Capability
from cryptvol.errors import InvalidArgument

_Cap = csi_pb2.NodeServiceCapability.RPC
# VOLUME_MOUNT_GROUP: kubelet then hands a pod's fsGroup to the driver (volume_mount_group)
# instead of changing ownership itself: a Kata guest mounts the volume where kubelet cannot
# reach it, so fsGroup travels in mountInfo.json; the host mode applies it as kubelet would.
_OFFERED = (_Cap.STAGE_UNSTAGE_VOLUME, _Cap.GET_VOLUME_STATS, _Cap.EXPAND_VOLUME,
            _Cap.VOLUME_CONDITION, _Cap.VOLUME_MOUNT_GROUP)
_Unit = csi_pb2.VolumeUsage.Unit


def _served_capability(
    request: csi_pb2.NodeStageVolumeRequest | csi_pb2.NodePublishVolumeRequest,
) -> Capability:
    """The request's one capability, required, and one this driver serves."""
    if not request.HasField("volume_capability"):
        raise InvalidArgument("volume_capability is required")
    cap = convert.capability(request.volume_capability)
    check_capabilities([cap])
    return cap


@bounded
class NodeServicer(csi_pb2_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(self, engine: NodeEngine, max_volumes: int = 0) -> None:
        self.engine = engine
        self.max_volumes = max_volumes

    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest,
                        context: grpc.ServicerContext) -> csi_pb2.NodeStageVolumeResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        path = convert.require(request.staging_target_path, "staging_target_path")
        cap = _served_capability(request)
        self.engine.stage(volume_id, path, cap, dict(request.secrets))
        return csi_pb2.NodeStageVolumeResponse()

    def NodeUnstageVolume(self, request: csi_pb2.NodeUnstageVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodeUnstageVolumeResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        path = convert.require(request.staging_target_path, "staging_target_path")
        self.engine.unstage(volume_id, path)
        return csi_pb2.NodeUnstageVolumeResponse()

    def NodePublishVolume(self, request: csi_pb2.NodePublishVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        target = convert.require(request.target_path, "target_path")
        staging = convert.require(request.staging_target_path, "staging_target_path")
        cap = _served_capability(request)
        self.engine.publish(volume_id, staging, target, cap, request.readonly,
                            dict(request.volume_context))
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        target = convert.require(request.target_path, "target_path")
        self.engine.unpublish(volume_id, target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        path = convert.require(request.volume_path, "volume_path")
        stats = self.engine.stats(volume_id, path)
        u = stats.usage
        usage = [csi_pb2.VolumeUsage(unit=_Unit.BYTES, total=u.total_bytes, used=u.used_bytes,
                                     available=u.available_bytes)]
        if not stats.block:
            usage.append(csi_pb2.VolumeUsage(unit=_Unit.INODES, total=u.total_inodes,
                                             used=u.used_inodes, available=u.available_inodes))
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=usage,
            volume_condition=csi_pb2.VolumeCondition(abnormal=stats.abnormal,
                                                     message=stats.message),
        )

    def NodeExpandVolume(self, request: csi_pb2.NodeExpandVolumeRequest,
                         context: grpc.ServicerContext) -> csi_pb2.NodeExpandVolumeResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        path = convert.require(request.volume_path, "volume_path")
        if request.HasField("volume_capability"):
            convert.capability(request.volume_capability)
        limit = request.capacity_range.limit_bytes
        required = request.capacity_range.required_bytes
        if limit and required > limit:
            raise InvalidArgument(f"limit_bytes {limit} is below required_bytes {required}")
        size = self.engine.expand(volume_id, path, required, limit, dict(request.secrets))
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=csi_pb2.NodeServiceCapability.RPC(type=t))
            for t in _OFFERED
        ])

    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest,
                    context: grpc.ServicerContext) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.engine.node_id,
            max_volumes_per_node=self.max_volumes,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_KEY: self.engine.node_id}),
        )
