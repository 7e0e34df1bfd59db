import threading

import pytest

from cryptvol.engine.locks import OperationLocks
from cryptvol.errors import Aborted


def test_a_second_operation_on_a_busy_volume_is_aborted_naming_the_first():
    locks = OperationLocks()
    with (
        locks.hold("vol-1", "NodeStageVolume"),
        pytest.raises(Aborted, match="NodeStageVolume"),
        locks.hold("vol-1", "NodeUnstageVolume"),
    ):
        pass


def test_operations_on_different_volumes_run_together():
    locks = OperationLocks()
    with locks.hold("vol-1", "a"), locks.hold("vol-2", "b"):
        assert locks.busy() == {"vol-1": "a", "vol-2": "b"}


def test_the_lock_is_released_when_the_operation_fails():
    locks = OperationLocks()
    with pytest.raises(RuntimeError), locks.hold("vol-1", "a"):
        raise RuntimeError("boom")
    with locks.hold("vol-1", "b"):
        pass


def test_only_one_of_many_threads_gets_the_volume():
    locks = OperationLocks()
    barrier = threading.Barrier(8)
    inside = threading.Event()
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        try:
            with locks.hold("vol", "op"):
                inside.wait(0.5)
                results.append("ran")
        except Aborted:
            results.append("aborted")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ran") >= 1
    assert results.count("ran") + results.count("aborted") == 8
