"""Every malformed request gets its CSI-correct code, and changes nothing.

Two tables: malformed requests (missing fields, bad values, sizes beyond the CSI spec's
limits), and hostile paths for every node RPC (tests/support/hostile.py). The hostile
table's counts per RPC are printed by bench/bench_hostile.py."""

import re

import grpc
import pytest

from cryptvol.csi.client import block_capability, mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.engine.ids import snapshot_id_for
from cryptvol.errors import QUOTE_LIMIT
from support import hostile

MIB = 1024 * 1024
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
ABORTED = grpc.StatusCode.ABORTED
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
MODE = pb.VolumeCapability.AccessMode
EXT4 = mount_capability("ext4")
MISSING = "cv-00000000000000000000000000000000"
MISSING_SNAPSHOT = "cs-00000000000000000000000000000000"
SNAPSHOT_NAME = "existing-snapshot"


def _from_snapshot():
    return pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(
        snapshot_id=snapshot_id_for(SNAPSHOT_NAME)))


def _from_volume(volume_id):
    return pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(
        volume_id=volume_id))


def _copy(source, required=0, limit=0, parameters=None, secrets=None, cap=EXT4):
    return pb.CreateVolumeRequest(
        name="copy", volume_capabilities=[cap], volume_content_source=source,
        capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit),
        parameters=parameters or {}, secrets=secrets or {},
    )


def _cap_without_access_type():
    return pb.VolumeCapability(access_mode=MODE(mode=MODE.SINGLE_NODE_WRITER))


CASES = [
    # (id, service, method, request factory(volume_id, tmp), expected code)
    (
        "create: no name",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(volume_capabilities=[EXT4]),
        INVALID,
    ),
    (
        "create: no capability",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(name="x"),
        INVALID,
    ),
    (
        "create: capability without access type",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[_cap_without_access_type()]
        ),
        INVALID,
    ),
    (
        "create: unknown parameter",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[EXT4], parameters={"keysize": "512"}
        ),
        INVALID,
    ),
    (
        "create: bad parameter value",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[EXT4], parameters={"keySize": "7"}
        ),
        INVALID,
    ),
    (
        "create: range that cannot be met",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x",
            volume_capabilities=[mount_capability("xfs")],
            capacity_range=pb.CapacityRange(required_bytes=MIB, limit_bytes=2 * MIB),
        ),
        OUT_OF_RANGE,
    ),
    (
        "create: limit below required",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x",
            volume_capabilities=[EXT4],
            capacity_range=pb.CapacityRange(required_bytes=10 * MIB, limit_bytes=5 * MIB),
        ),
        INVALID,
    ),
    (
        "create: multi-node access mode",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x",
            volume_capabilities=[mount_capability("ext4", mode=MODE.MULTI_NODE_MULTI_WRITER)],
        ),
        INVALID,
    ),
    (
        "create: unsupported filesystem",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[mount_capability("btrfs")]
        ),
        INVALID,
    ),
    (
        "create: from an unknown snapshot",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=MISSING_SNAPSHOT))),
        NOT_FOUND,
    ),
    (
        "create: from a snapshot id cryptvol never made",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(pb.VolumeContentSource(
            snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id="s"))),
        NOT_FOUND,
    ),
    (
        "create: from an unknown volume",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(pb.VolumeContentSource(
            volume=pb.VolumeContentSource.VolumeSource(volume_id=MISSING))),
        NOT_FOUND,
    ),
    (
        "create: a content source naming nothing",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(pb.VolumeContentSource()),
        INVALID,
    ),
    (
        "create: a restore smaller than its snapshot",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_snapshot(), required=16 * MIB, limit=16 * MIB),
        OUT_OF_RANGE,
    ),
    (
        "create: a clone limited below its source's size",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_volume(v), limit=16 * MIB),
        OUT_OF_RANGE,
    ),
    (
        "create: a restore with another key source",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_snapshot(), parameters={"keySource": "secret"},
                           secrets={"passphrase": "p"}),
        INVALID,
    ),
    (
        "create: a restore with another cipher",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_snapshot(), parameters={"keySize": "256"}),
        INVALID,
    ),
    (
        "create: a restore with another filesystem",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_snapshot(), cap=mount_capability("xfs")),
        INVALID,
    ),
    (
        "create: a restore into an unknown pool names the configured ones",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_snapshot(), parameters={"pool": "elsewhere"}),
        INVALID,
    ),
    (
        "create: cloneReencrypt that is not a boolean",
        "controller",
        "CreateVolume",
        lambda v, t: _copy(_from_volume(v), parameters={"cloneReencrypt": "yes"}),
        INVALID,
    ),
    (
        "create: the name of a copy of another source",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(name="existing", volume_capabilities=[EXT4],
                                            capacity_range=pb.CapacityRange(
                                                required_bytes=32 * MIB),
                                            volume_content_source=_from_snapshot()),
        ALREADY_EXISTS,
    ),
    (
        "snapshot: no name",
        "controller",
        "CreateSnapshot",
        lambda v, t: pb.CreateSnapshotRequest(source_volume_id=v),
        INVALID,
    ),
    (
        "snapshot: no source",
        "controller",
        "CreateSnapshot",
        lambda v, t: pb.CreateSnapshotRequest(name="snap-x"),
        INVALID,
    ),
    (
        "snapshot: unknown source",
        "controller",
        "CreateSnapshot",
        lambda v, t: pb.CreateSnapshotRequest(name="snap-x", source_volume_id=MISSING),
        NOT_FOUND,
    ),
    (
        "snapshot: unknown parameter",
        "controller",
        "CreateSnapshot",
        lambda v, t: pb.CreateSnapshotRequest(name="snap-x", source_volume_id=v,
                                              parameters={"pool": "other"}),
        INVALID,
    ),
    (
        "snapshot: the name of a snapshot of another volume",
        "controller",
        "CreateSnapshot",
        lambda v, t: pb.CreateSnapshotRequest(name=SNAPSHOT_NAME, source_volume_id=MISSING),
        ALREADY_EXISTS,
    ),
    (
        "delete snapshot: no id",
        "controller",
        "DeleteSnapshot",
        lambda v, t: pb.DeleteSnapshotRequest(),
        INVALID,
    ),
    (
        "delete snapshot: unknown id succeeds",
        "controller",
        "DeleteSnapshot",
        lambda v, t: pb.DeleteSnapshotRequest(snapshot_id=MISSING_SNAPSHOT),
        OK,
    ),
    (
        "get snapshot: unknown id",
        "controller",
        "GetSnapshot",
        lambda v, t: pb.GetSnapshotRequest(snapshot_id=MISSING_SNAPSHOT),
        NOT_FOUND,
    ),
    (
        "list snapshots: a token this driver never issued",
        "controller",
        "ListSnapshots",
        lambda v, t: pb.ListSnapshotsRequest(starting_token="page-2"),
        ABORTED,
    ),
    (
        "list snapshots: negative max_entries",
        "controller",
        "ListSnapshots",
        lambda v, t: pb.ListSnapshotsRequest(max_entries=-1),
        INVALID,
    ),
    (
        "list volumes: a token this driver never issued",
        "controller",
        "ListVolumes",
        lambda v, t: pb.ListVolumesRequest(starting_token="page-2"),
        ABORTED,
    ),
    ("delete: no id", "controller", "DeleteVolume", lambda v, t: pb.DeleteVolumeRequest(), INVALID),
    (
        "delete: unknown id succeeds",
        "controller",
        "DeleteVolume",
        lambda v, t: pb.DeleteVolumeRequest(volume_id=MISSING),
        OK,
    ),
    (
        "controller expansion is not offered: the node grows node-local volumes",
        "controller",
        "ControllerExpandVolume",
        lambda v, t: pb.ControllerExpandVolumeRequest(
            volume_id=v, capacity_range=pb.CapacityRange(required_bytes=128 * MIB)
        ),
        UNIMPLEMENTED,
    ),
    (
        "node expand: limit below the current size",
        "node",
        "NodeExpandVolume",
        lambda v, t: pb.NodeExpandVolumeRequest(
            volume_id=v, volume_path=str(t), capacity_range=pb.CapacityRange(limit_bytes=MIB)
        ),
        OUT_OF_RANGE,
    ),
    (
        "validate: unknown volume",
        "controller",
        "ValidateVolumeCapabilities",
        lambda v, t: pb.ValidateVolumeCapabilitiesRequest(
            volume_id=MISSING, volume_capabilities=[EXT4]
        ),
        NOT_FOUND,
    ),
    (
        "validate: no capability",
        "controller",
        "ValidateVolumeCapabilities",
        lambda v, t: pb.ValidateVolumeCapabilitiesRequest(volume_id=v),
        INVALID,
    ),
    (
        "stage: no volume id",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            staging_target_path=f"{t}/s", volume_capability=EXT4
        ),
        INVALID,
    ),
    (
        "stage: no staging path",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(volume_id=v, volume_capability=EXT4),
        INVALID,
    ),
    (
        "stage: no capability",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(volume_id=v, staging_target_path=f"{t}/s"),
        INVALID,
    ),
    (
        "stage: multi-node access mode",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            volume_id=v,
            staging_target_path=f"{t}/s",
            volume_capability=mount_capability("ext4", mode=MODE.MULTI_NODE_READER_ONLY),
        ),
        INVALID,
    ),
    (
        "stage: unknown volume",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            volume_id=MISSING, staging_target_path=f"{t}/s", volume_capability=EXT4
        ),
        NOT_FOUND,
    ),
    (
        "stage: parent of staging path missing",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            volume_id=v, staging_target_path=f"{t}/no/s", volume_capability=EXT4
        ),
        NOT_FOUND,
    ),
    (
        "stage: relative staging path",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            volume_id=v, staging_target_path="rel/s", volume_capability=EXT4
        ),
        INVALID,
    ),
    (
        "unstage: no staging path",
        "node",
        "NodeUnstageVolume",
        lambda v, t: pb.NodeUnstageVolumeRequest(volume_id=v),
        INVALID,
    ),
    (
        "unstage: what is not staged succeeds",
        "node",
        "NodeUnstageVolume",
        lambda v, t: pb.NodeUnstageVolumeRequest(volume_id=v, staging_target_path=f"{t}/s"),
        OK,
    ),
    (
        "unstage: unknown volume is not found, nothing touched",
        "node",
        "NodeUnstageVolume",
        lambda v, t: pb.NodeUnstageVolumeRequest(volume_id=MISSING, staging_target_path=f"{t}/s"),
        NOT_FOUND,
    ),
    (
        "publish: no target path",
        "node",
        "NodePublishVolume",
        lambda v, t: pb.NodePublishVolumeRequest(
            volume_id=v, staging_target_path=f"{t}/s", volume_capability=EXT4
        ),
        INVALID,
    ),
    (
        "publish: no staging path",
        "node",
        "NodePublishVolume",
        lambda v, t: pb.NodePublishVolumeRequest(
            volume_id=v, target_path=f"{t}/p", volume_capability=EXT4
        ),
        INVALID,
    ),
    (
        "publish: parent of target path missing",
        "node",
        "NodePublishVolume",
        lambda v, t: pb.NodePublishVolumeRequest(
            volume_id=v,
            staging_target_path=f"{t}/s",
            target_path=f"{t}/no/p",
            volume_capability=block_capability(),
        ),
        NOT_FOUND,
    ),
    (
        "publish: unknown volume",
        "node",
        "NodePublishVolume",
        lambda v, t: pb.NodePublishVolumeRequest(
            volume_id=MISSING,
            staging_target_path=f"{t}/s",
            target_path=f"{t}/p",
            volume_capability=EXT4,
        ),
        NOT_FOUND,
    ),
    (
        "unpublish: no target path",
        "node",
        "NodeUnpublishVolume",
        lambda v, t: pb.NodeUnpublishVolumeRequest(volume_id=v),
        INVALID,
    ),
    (
        "unpublish: what is not published succeeds",
        "node",
        "NodeUnpublishVolume",
        lambda v, t: pb.NodeUnpublishVolumeRequest(volume_id=v, target_path=f"{t}/p"),
        OK,
    ),
    (
        "node expand: no volume path",
        "node",
        "NodeExpandVolume",
        lambda v, t: pb.NodeExpandVolumeRequest(volume_id=v),
        INVALID,
    ),
    (
        "node expand: unknown volume",
        "node",
        "NodeExpandVolume",
        lambda v, t: pb.NodeExpandVolumeRequest(volume_id=MISSING, volume_path=str(t)),
        NOT_FOUND,
    ),
    (
        "stats: no volume path",
        "node",
        "NodeGetVolumeStats",
        lambda v, t: pb.NodeGetVolumeStatsRequest(volume_id=v),
        INVALID,
    ),
    (
        "stats: unknown volume",
        "node",
        "NodeGetVolumeStats",
        lambda v, t: pb.NodeGetVolumeStatsRequest(volume_id=MISSING, volume_path=str(t)),
        NOT_FOUND,
    ),
    (
        "stats: path that does not exist",
        "node",
        "NodeGetVolumeStats",
        lambda v, t: pb.NodeGetVolumeStatsRequest(volume_id=v, volume_path=f"{t}/nowhere"),
        NOT_FOUND,
    ),
    # Sizes beyond the CSI spec's limits (seen: the client got RESOURCE_EXHAUSTED "Stream
    # removed" instead of the real code, the message quoting the whole input).
    (
        "create: a 1 MiB name",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(name="n" * MIB, volume_capabilities=[EXT4]),
        INVALID,
    ),
    (
        "create: an 8 KiB parameter key",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[EXT4], parameters={"k" * 8192: "v"}
        ),
        INVALID,
    ),
    (
        "create: 5 KiB of parameters",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[EXT4],
            parameters={f"k{i}": "v" * 100 for i in range(50)},
        ),
        INVALID,
    ),
    (
        "create: a long unknown parameter key within the limits is quoted shortened",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[EXT4], parameters={"k" * 128: "v" * 3000}
        ),
        INVALID,
    ),
    (
        "create: a secret key beyond 128 bytes",
        "controller",
        "CreateVolume",
        lambda v, t: pb.CreateVolumeRequest(
            name="x", volume_capabilities=[EXT4], secrets={"s" * 200: "v"}
        ),
        INVALID,
    ),
    (
        "delete: a 64 KiB volume id",
        "controller",
        "DeleteVolume",
        lambda v, t: pb.DeleteVolumeRequest(volume_id="v" * 65536),
        INVALID,
    ),
    (
        "get volume: a 64 KiB volume id",
        "controller",
        "ControllerGetVolume",
        lambda v, t: pb.ControllerGetVolumeRequest(volume_id="v" * 65536),
        INVALID,
    ),
    (
        "list: a 1 MiB starting token",
        "controller",
        "ListVolumes",
        lambda v, t: pb.ListVolumesRequest(starting_token="t" * MIB),
        INVALID,
    ),
    (
        "stage: a 64 KiB volume id",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            volume_id="v" * 65536, staging_target_path=f"{t}/s", volume_capability=EXT4
        ),
        INVALID,
    ),
    (
        "unpublish: a 64 KiB volume id",
        "node",
        "NodeUnpublishVolume",
        lambda v, t: pb.NodeUnpublishVolumeRequest(volume_id="v" * 65536, target_path=f"{t}/p"),
        INVALID,
    ),
    (
        "stage: a 200-byte mount flag",
        "node",
        "NodeStageVolume",
        lambda v, t: pb.NodeStageVolumeRequest(
            volume_id=v, staging_target_path=f"{t}/s",
            volume_capability=mount_capability("ext4", flags=("o" * 200,)),
        ),
        INVALID,
    ),
    (
        "unpublish: a 4 KiB path that is not a volume's is quoted shortened",
        "node",
        "NodeUnpublishVolume",
        lambda v, t: pb.NodeUnpublishVolumeRequest(volume_id=v, target_path="r" * 4000),
        INVALID,
    ),
]


@pytest.fixture(scope="module")
def existing_volume(shared_driver):
    volume = shared_driver.client.controller.CreateVolume(
        pb.CreateVolumeRequest(
            name="existing",
            volume_capabilities=[EXT4],
            capacity_range=pb.CapacityRange(required_bytes=32 * MIB),
        )
    ).volume
    shared_driver.client.controller.CreateSnapshot(
        pb.CreateSnapshotRequest(name=SNAPSHOT_NAME, source_volume_id=volume.volume_id))
    return volume


def _state(driver):
    """Everything a request could change: pool files, volume and snapshot records, keys."""
    files = sorted(str(p.relative_to(driver.pool_dir)) for p in driver.pool_dir.rglob("*"))
    from cryptvol.state.repository import SnapshotRepository, VolumeRepository
    from cryptvol.store.sqlite import SqliteStore

    store = SqliteStore(driver.state_dir / "cryptvol.db")
    try:
        records = [r.model_dump() for r in VolumeRepository(store).all()]
        records += [r.model_dump() for r in SnapshotRepository(store).all()]
        keys = [e.key for e in store.range("/cryptvol/deks/")]
    finally:
        store.close()
    return files, records, keys


@pytest.mark.parametrize(
    ("service", "method", "make", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_its_code_and_changes_nothing(
    shared_driver, existing_volume, tmp_path, service, method, make, code
):
    driver = shared_driver
    before = _state(driver)
    stub = getattr(driver.client, service)
    request = make(existing_volume.volume_id, tmp_path)
    if code == OK:
        getattr(stub, method)(request)
    else:
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request)
        assert info.value.code() == code, info.value.details()
        assert info.value.details()
        _assert_quotes_little(info.value.details())
    assert _state(driver) == before


def _assert_quotes_little(details: str) -> None:
    """No message quotes more than QUOTE_LIMIT characters of any input (the long inputs
    here repeat one character: no longer run of one may appear)."""
    assert len(details) < 2048, details[:200]
    assert not re.search(rf"(.)\1{{{QUOTE_LIMIT}}}", details), details[:300]


@pytest.fixture
def scene(shared_driver, tmp_path):
    made = hostile.make_scene(tmp_path, shared_driver.state_dir)
    yield made
    made.teardown()


@pytest.mark.parametrize("case", hostile.cases(), ids=lambda c: c.id)
def test_a_hostile_path_gets_its_code_and_touches_nothing(shared_driver, existing_volume,
                                                         scene, case):
    driver = shared_driver
    roots = (scene.tmp, scene.outside, driver.state_dir, driver.pool_dir)
    before = hostile.snapshot(*roots), _state(driver)
    req = hostile.request(case, scene, existing_volume.volume_id)
    code, details = hostile.call(driver.client.node, case, req)
    assert code == case.code, details
    if code != hostile.OK:
        _assert_quotes_little(details)
    assert (hostile.snapshot(*roots), _state(driver)) == before
