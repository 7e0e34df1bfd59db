"""Fixtures for the keys integration tests: real etcd members started and stopped here."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from etcd_cluster import EtcdCluster


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd", size=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()
