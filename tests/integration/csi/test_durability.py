"""What the driver acknowledged survives its death: SIGKILL right after OK replies, under
load, and every acknowledged volume and key is there when it starts again.

SIGKILL leaves the page cache alone, so this proves the order (no reply before its commit),
not the fsync; the fsync is SQLite's `synchronous = FULL` on the commit each reply waits for.
"""

from __future__ import annotations

import threading

import grpc

from cryptvol.csi.client import CsiClient, mount_capability
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.keys.manager import open_local
from support.driver import RunningDriver

MIB = 1024 * 1024
CLIENTS = 8
KILL_AFTER = 48  # acknowledged creates


def test_every_acknowledged_create_and_delete_survives_a_sigkill_under_load(tmp_path):
    driver = RunningDriver(tmp_path, log_level="info")
    driver.start()
    created: list[str] = []  # acknowledged CreateVolume, not deleted since
    deleted: list[str] = []  # acknowledged DeleteVolume
    lock = threading.Lock()
    enough = threading.Event()

    def client(index: int) -> None:
        cap = mount_capability("ext4")
        with CsiClient(driver.endpoint) as csi:
            try:
                for i in range(1000):
                    volume_id = csi.controller.CreateVolume(pb.CreateVolumeRequest(
                        name=f"d-{index}-{i}", volume_capabilities=[cap],
                        capacity_range=pb.CapacityRange(required_bytes=16 * MIB),
                    ), timeout=30).volume.volume_id
                    with lock:
                        created.append(volume_id)
                        if len(created) + len(deleted) >= KILL_AFTER:
                            enough.set()
                    if i % 3 == 2:  # some deletes in the mix; in flight, its fate is unknown
                        with lock:
                            created.remove(volume_id)
                        csi.controller.DeleteVolume(
                            pb.DeleteVolumeRequest(volume_id=volume_id), timeout=30)
                        with lock:
                            deleted.append(volume_id)
            except grpc.RpcError:
                return  # the driver died under this call: its outcome is unknown

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(120), "the driver acknowledged too little to test"
        driver.kill()
    finally:
        for t in threads:
            t.join(60)
    with lock:
        acked, gone = list(created), list(deleted)
    assert acked and gone

    csi = driver.restart()
    try:
        for volume_id in acked:
            answer = csi.controller.ControllerGetVolume(
                pb.ControllerGetVolumeRequest(volume_id=volume_id))
            assert answer.volume.volume_id == volume_id
            assert (driver.pool_dir / f"{volume_id}.img").exists()
        for volume_id in gone:
            assert not (driver.pool_dir / f"{volume_id}.img").exists()
    finally:
        driver.stop()
    store, keys = open_local(driver.state_dir)
    try:
        for volume_id in acked:
            assert len(keys.get_dek(volume_id).reveal()) == 32
        assert not any(keys.store.get(f"/cryptvol/deks/{v}") for v in gone)
    finally:
        store.close()
