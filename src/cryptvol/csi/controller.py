"""The CSI Controller service: validates each request, calls the engine, shapes the answer."""

from __future__ import annotations

import grpc

from cryptvol.csi import convert
from cryptvol.csi.bounds import bounded
from cryptvol.csi.gen import csi_pb2, csi_pb2_grpc
from cryptvol.engine.controller import ControllerEngine, CreateRequest, VolumeInfo
from cryptvol.engine.snapshots import SnapshotEngine, SnapshotInfo
from cryptvol.errors import InvalidArgument

_Cap = csi_pb2.ControllerServiceCapability.RPC
# No EXPAND_VOLUME: pools are node-local, so NodeExpandVolume grows the backing volume and
# the CO's resizer only passes a request on to the node.
_OFFERED = (_Cap.CREATE_DELETE_VOLUME, _Cap.LIST_VOLUMES, _Cap.GET_CAPACITY, _Cap.GET_VOLUME,
            _Cap.CREATE_DELETE_SNAPSHOT, _Cap.LIST_SNAPSHOTS, _Cap.GET_SNAPSHOT,
            _Cap.CLONE_VOLUME, _Cap.VOLUME_CONDITION)


def _condition(info: VolumeInfo) -> csi_pb2.VolumeCondition:
    return csi_pb2.VolumeCondition(abnormal=info.abnormal, message=info.condition)


def _volume(info: VolumeInfo) -> csi_pb2.Volume:
    return csi_pb2.Volume(
        volume_id=info.volume_id,
        capacity_bytes=info.capacity_bytes,
        volume_context=info.volume_context,
        content_source=convert.content_source(info.source),
        accessible_topology=[csi_pb2.Topology(segments=info.topology)],
    )


def _snapshot(info: SnapshotInfo) -> csi_pb2.Snapshot:
    snapshot = csi_pb2.Snapshot(
        snapshot_id=info.snapshot_id,
        source_volume_id=info.source_volume_id,
        size_bytes=info.size_bytes,
        ready_to_use=info.ready,
    )
    snapshot.creation_time.FromNanoseconds(int(info.created_at * 1e9))
    return snapshot


@bounded
class ControllerServicer(csi_pb2_grpc.ControllerServicer):  # type: ignore[misc]
    def __init__(self, engine: ControllerEngine, snapshots: SnapshotEngine) -> None:
        self.engine = engine
        self.snapshots = snapshots

    def CreateVolume(self, request: csi_pb2.CreateVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.CreateVolumeResponse:
        convert.require(request.name, "name")
        if not request.volume_capabilities:
            raise InvalidArgument("volume_capabilities is required")
        if request.mutable_parameters:
            raise InvalidArgument("mutable_parameters are not supported by this driver")
        topology = request.accessibility_requirements
        info = self.engine.create_volume(CreateRequest(
            name=request.name,
            required_bytes=request.capacity_range.required_bytes,
            limit_bytes=request.capacity_range.limit_bytes,
            capabilities=convert.capabilities(request.volume_capabilities),
            parameters=dict(request.parameters),
            secrets=dict(request.secrets),
            requisite_topologies=[dict(t.segments) for t in topology.requisite],
            preferred_topologies=[dict(t.segments) for t in topology.preferred],
            source=convert.source_of(request.volume_content_source)
            if request.HasField("volume_content_source") else None,
        ))
        return csi_pb2.CreateVolumeResponse(volume=_volume(info))

    def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest,
                     context: grpc.ServicerContext) -> csi_pb2.DeleteVolumeResponse:
        self.engine.delete_volume(convert.require(request.volume_id, "volume_id"))
        return csi_pb2.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = convert.require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise InvalidArgument("volume_capabilities is required")
        self.engine.require(volume_id)
        caps = []
        for cap in request.volume_capabilities:
            try:
                caps.append(convert.capability(cap))
            except InvalidArgument as exc:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(message=str(exc))
        reason = self.engine.validate_capabilities(volume_id, caps, dict(request.parameters))
        if reason is not None:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=reason)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def ListVolumes(self, request: csi_pb2.ListVolumesRequest,
                    context: grpc.ServicerContext) -> csi_pb2.ListVolumesResponse:
        infos, token = self.engine.list_volumes(request.max_entries, request.starting_token)
        entries = [csi_pb2.ListVolumesResponse.Entry(
            volume=_volume(i),
            status=csi_pb2.ListVolumesResponse.VolumeStatus(volume_condition=_condition(i)),
        ) for i in infos]
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=token)

    def GetCapacity(self, request: csi_pb2.GetCapacityRequest,
                    context: grpc.ServicerContext) -> csi_pb2.GetCapacityResponse:
        topology = dict(request.accessible_topology.segments) \
            if request.HasField("accessible_topology") else None
        available = self.engine.capacity(convert.capabilities(request.volume_capabilities),
                                         dict(request.parameters), topology)
        return csi_pb2.GetCapacityResponse(available_capacity=available)

    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(
                rpc=csi_pb2.ControllerServiceCapability.RPC(type=t))
            for t in _OFFERED
        ])

    def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetVolumeResponse:
        info = self.engine.get_volume(convert.require(request.volume_id, "volume_id"))
        return csi_pb2.ControllerGetVolumeResponse(
            volume=_volume(info),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
                volume_condition=_condition(info)),
        )

    def CreateSnapshot(self, request: csi_pb2.CreateSnapshotRequest,
                       context: grpc.ServicerContext) -> csi_pb2.CreateSnapshotResponse:
        name = convert.require(request.name, "name")
        source = convert.require(request.source_volume_id, "source_volume_id")
        info = self.snapshots.create_snapshot(source, name, dict(request.parameters))
        return csi_pb2.CreateSnapshotResponse(snapshot=_snapshot(info))

    def DeleteSnapshot(self, request: csi_pb2.DeleteSnapshotRequest,
                       context: grpc.ServicerContext) -> csi_pb2.DeleteSnapshotResponse:
        self.snapshots.delete_snapshot(convert.require(request.snapshot_id, "snapshot_id"))
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(self, request: csi_pb2.ListSnapshotsRequest,
                      context: grpc.ServicerContext) -> csi_pb2.ListSnapshotsResponse:
        infos, token = self.snapshots.list_snapshots(
            request.max_entries, request.starting_token, request.source_volume_id,
            request.snapshot_id)
        entries = [csi_pb2.ListSnapshotsResponse.Entry(snapshot=_snapshot(i)) for i in infos]
        return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=token)

    def GetSnapshot(self, request: csi_pb2.GetSnapshotRequest,
                    context: grpc.ServicerContext) -> csi_pb2.GetSnapshotResponse:
        info = self.snapshots.get_snapshot(convert.require(request.snapshot_id, "snapshot_id"))
        return csi_pb2.GetSnapshotResponse(snapshot=_snapshot(info))
