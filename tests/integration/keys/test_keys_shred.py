"""A shredded DEK and a retired KEK are gone from the store, not only unreferenced: on real
SQLite, their bytes are in neither the db file nor its WAL; on a real etcd member, the
revision that held them can no longer be read."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.keyset import KEYSET_KEY, dek_key
from cryptvol.keys.manager import KeyManager
from cryptvol.keys.rotation import Rotation
from cryptvol.store.etcd import EtcdStore
from cryptvol.store.sqlite import SqliteStore
from support.etcd_cluster import EtcdCluster


def ciphertext(envelope: bytes) -> bytes:
    return str(json.loads(envelope)["ct"]).encode()


def sealed_material(keyset: bytes) -> list[bytes]:
    """The sealed KEKs in a key-set record (`rootkey:v1:<fp>:<b64 blob>`)."""
    return [k["ref"].rsplit(":", 1)[1].encode() for k in json.loads(keyset)["keks"]]


def files_of(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_sqlite_keeps_no_byte_of_a_shredded_dek_or_a_retired_kek(tmp_path: Path) -> None:
    make_root_key(tmp_path / "root.key")
    db = tmp_path / "state" / "cryptvol.db"
    store = SqliteStore(db)
    km = KeyManager(store, RootKeyProvider(tmp_path / "root.key"))
    for i in range(40):
        km.create_dek(f"pvc-{i:02d}")
    shredded = ciphertext(store.get(dek_key("pvc-07")).value)  # type: ignore[union-attr]
    assert shredded in files_of(db)
    km.delete_dek("pvc-07")
    assert shredded not in files_of(db)

    rotation = Rotation(store, km.provider)
    rotation.prepare(wait=0)
    rotation.rotate(wait=0)
    old_keyset = store.get(KEYSET_KEY).value  # type: ignore[union-attr]
    retired = sealed_material(old_keyset)[0]  # the first KEK, retired by reencrypt
    rewrapped = ciphertext(store.get(dek_key("pvc-08")).value)  # type: ignore[union-attr]
    rotation.reencrypt(wait=0, batch=8)
    held = files_of(db)
    assert retired not in held and rewrapped not in held
    store.close()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd").start()
    yield cluster
    cluster.stop()


def read_at(cluster: EtcdCluster, key: str, revision: int) -> tuple[int, bytes]:
    """Range `key` as it was at `revision`, straight from etcd's gateway: (status, body)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(), "revision": revision})
    request = urllib.request.Request(
        cluster.members[0].client_url + "/v3/kv/range", data=body.encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_etcd_history_no_longer_holds_a_shredded_dek_or_a_retired_kek(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    make_root_key(tmp_path / "root.key")
    store = EtcdStore(etcd.endpoints)
    km = KeyManager(store, RootKeyProvider(tmp_path / "root.key"))
    for i in range(20):
        km.create_dek(f"pvc-{i:02d}")
    entry = store.get(dek_key("pvc-07"))
    assert entry is not None
    assert read_at(etcd, dek_key("pvc-07"), entry.revision)[0] == 200
    km.delete_dek("pvc-07")
    code, body = read_at(etcd, dek_key("pvc-07"), entry.revision)
    assert code == 400 and b"required revision has been compacted" in body
    assert ciphertext(entry.value) not in body

    rotation = Rotation(store, km.provider)
    rotation.prepare(wait=0)
    rotation.rotate(wait=0)
    before = store.get(KEYSET_KEY)
    assert before is not None
    rotation.reencrypt(wait=0)
    code, body = read_at(etcd, KEYSET_KEY, before.revision)
    assert code == 400 and b"required revision has been compacted" in body
    assert not any(sealed in body for sealed in sealed_material(before.value))
    assert km.get_dek("pvc-08")  # what was not shredded still unwraps
    store.close()
