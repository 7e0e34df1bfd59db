"""The DEK envelope: AES-256-GCM under a KEK, bound to its volume, versioned, tamper-evident."""

from __future__ import annotations

import base64
import json
import os

import pytest

from cryptvol.errors import FailedPrecondition
from cryptvol.keys import envelope
from cryptvol.keys.kek import Kek
from cryptvol.system.secret import Secret

KEK = Kek("kek-a", Secret(os.urandom(32)), 0.0)
OTHER = Kek("kek-a", Secret(os.urandom(32)), 0.0)


def find(kek_id: str) -> Kek:
    assert kek_id == "kek-a"
    return KEK


def test_a_wrapped_dek_unwraps_for_its_volume_and_names_its_kek() -> None:
    dek = Secret(os.urandom(32))
    raw = envelope.wrap(KEK, dek, "pvc-1")
    doc = json.loads(raw)
    assert doc["v"] == 1 and doc["kek"] == "kek-a"
    assert len(base64.b64decode(doc["nonce"])) == 12
    assert envelope.unwrap(raw, "pvc-1", find) == dek
    assert envelope.peek_kek_id(raw, what="x") == "kek-a"


def test_each_wrap_uses_a_fresh_nonce() -> None:
    dek = Secret(os.urandom(32))
    a, b = envelope.wrap(KEK, dek, "v"), envelope.wrap(KEK, dek, "v")
    assert json.loads(a)["nonce"] != json.loads(b)["nonce"]


def test_an_envelope_copied_to_another_volume_does_not_unwrap() -> None:
    raw = envelope.wrap(KEK, Secret(os.urandom(32)), "pvc-1")
    with pytest.raises(FailedPrecondition, match="volume pvc-2 does not unwrap with KEK kek-a"):
        envelope.unwrap(raw, "pvc-2", find)


def test_a_tampered_ciphertext_is_refused() -> None:
    doc = json.loads(envelope.wrap(KEK, Secret(os.urandom(32)), "pvc-1"))
    ct = bytearray(base64.b64decode(doc["ct"]))
    ct[0] ^= 1
    doc["ct"] = base64.b64encode(bytes(ct)).decode()
    with pytest.raises(FailedPrecondition, match="does not unwrap"):
        envelope.unwrap(json.dumps(doc).encode(), "pvc-1", find)


def test_the_wrong_kek_material_is_refused() -> None:
    raw = envelope.wrap(OTHER, Secret(os.urandom(32)), "pvc-1")
    with pytest.raises(FailedPrecondition, match="does not unwrap with KEK kek-a"):
        envelope.unwrap(raw, "pvc-1", find)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "not a readable envelope"),
        (b'{"v":2,"kek":"k","nonce":"","ct":""}', "envelope version 2"),
        (b'{"v":1,"kek":"k"}', "not a readable envelope"),
        (b'{"v":1,"kek":"k","nonce":"AAAA","ct":"AAAA"}', "malformed nonce"),
    ],
)
def test_damaged_envelopes_get_a_clear_error(raw: bytes, message: str) -> None:
    with pytest.raises(FailedPrecondition, match=message):
        envelope.unwrap(raw, "pvc-1", find)


def test_nonces_never_repeat_across_threads_or_a_fork() -> None:
    import threading

    seen: list[bytes] = []
    lock = threading.Lock()

    def many() -> None:
        mine = [
            json.loads(envelope.wrap(KEK, Secret(b"k" * 32), "v"))["nonce"] for _ in range(3000)
        ]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child wraps once and reports its nonce
        os.write(w, json.loads(envelope.wrap(KEK, Secret(b"k" * 32), "v"))["nonce"].encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 100).decode()
    parent = json.loads(envelope.wrap(KEK, Secret(b"k" * 32), "v"))["nonce"]
    seen += [child, parent]
    assert len(set(seen)) == len(seen) == 12002


NEW = Kek("kek-b", Secret(os.urandom(32)), 0.0)


def find_either(kek_id: str) -> Kek:
    return {"kek-a": KEK, "kek-b": NEW}[kek_id]


def test_a_batch_rewrap_moves_each_envelope_to_the_current_kek_in_any_layout() -> None:
    deks = {f"pvc-{i}": Secret(os.urandom(32)) for i in range(4)}
    exact = {v: envelope.wrap(KEK, d, v) for v, d in deks.items()}
    # The same envelope in a layout the fast path does not take (spaces, other key order).
    doc = json.loads(exact["pvc-2"])
    reordered = {"ct": doc["ct"], "nonce": doc["nonce"], "kek": "kek-a", "v": 1}
    exact["pvc-2"] = json.dumps(reordered).encode()
    exact["pvc-3"] = envelope.wrap(NEW, deks["pvc-3"], "pvc-3")  # current already
    out = envelope.rewrap_many(list(exact.items()), find_either, NEW)
    assert out[3] is None
    nonces = set()
    for (volume, _), raw in zip(list(exact.items())[:3], out[:3], strict=True):
        assert raw is not None and envelope.peek_kek_id(raw, what=volume) == "kek-b"
        assert envelope.unwrap(raw, volume, find_either) == deks[volume]
        nonces.add(json.loads(raw)["nonce"])
    assert len(nonces) == 3


def test_a_batch_rewrap_stops_at_an_envelope_of_another_volume_and_names_it() -> None:
    good = envelope.wrap(KEK, Secret(os.urandom(32)), "pvc-1")
    moved = envelope.wrap(KEK, Secret(os.urandom(32)), "pvc-1")  # copied to pvc-2's record
    with pytest.raises(FailedPrecondition, match="volume pvc-2 does not unwrap"):
        envelope.rewrap_many([("pvc-1", good), ("pvc-2", moved)], find_either, NEW)
