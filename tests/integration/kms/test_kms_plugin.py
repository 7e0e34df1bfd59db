"""`cryptvol kms serve` as a process on the embedded store, called over its real unix socket
the way kube-apiserver calls it: round trips, every bad request, rotation with the plugin
running, metrics, secrets kept out of logs, errors and metrics, and bad flags."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cryptvol.kms.client import KmsClient
from cryptvol.kms.gen import kms_pb2 as pb
from support.etcd_cluster import free_port
from support.kms import RunningKms, keys_cli


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[RunningKms]:
    running = RunningKms(tmp_path, store_args=["--state-dir", str(tmp_path / "state")])
    running.start()
    yield running
    assert running.stop() == 0
    assert not os.path.lexists(running.endpoint.removeprefix("unix://"))


def test_round_trip_and_an_idempotent_status(plugin: RunningKms) -> None:
    client = plugin.client
    assert client is not None
    status = client.status()
    assert (status.version, status.healthz) == ("v2", "ok") and status.key_id.startswith("kek-")
    assert client.status() == status
    sealed = client.encrypt(b"d" * 32, uid="uid-1")
    assert sealed.key_id == status.key_id and len(sealed.ciphertext) <= 1024
    assert dict(sealed.annotations) == {"version.kms.cryptvol.io": b"1"}
    assert client.decrypt(sealed, uid="uid-2") == b"d" * 32
    path = Path(plugin.endpoint.removeprefix("unix://"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _bad_requests(good: pb.EncryptResponse) -> list[tuple[str, str, object, str, str]]:
    """(case, method, request, code, what the message says)."""
    ann = dict(good.annotations)

    def dec(**kw: object) -> pb.DecryptRequest:
        fields: dict[str, object] = {
            "ciphertext": good.ciphertext, "key_id": good.key_id, "annotations": ann
        }
        fields.update(kw)
        return pb.DecryptRequest(**fields)

    flipped = bytes([good.ciphertext[-1] ^ 1])
    return [
        ("empty plaintext", "Encrypt", pb.EncryptRequest(), "INVALID_ARGUMENT", "is 0 bytes"),
        ("plaintext over 1 kB", "Encrypt", pb.EncryptRequest(plaintext=b"x" * 1025),
         "INVALID_ARGUMENT", "is 1025 bytes; it must be 1 to 996"),
        ("plaintext of 997 bytes", "Encrypt", pb.EncryptRequest(plaintext=b"x" * 997),
         "INVALID_ARGUMENT", "1 to 996 bytes"),
        ("tampered ciphertext", "Decrypt", dec(ciphertext=good.ciphertext[:-1] + flipped),
         "INVALID_ARGUMENT", "was altered, or the key_id or the annotations"),
        ("unknown key_id", "Decrypt", dec(key_id="kek-20000101T000000Z-00000000"),
         "NOT_FOUND", "is not a key of this key manager"),
        ("an added annotation", "Decrypt", dec(annotations={**ann, "x.example.com": b"1"}),
         "INVALID_ARGUMENT", "was altered, or the key_id or the annotations"),
        ("no annotations", "Decrypt", dec(annotations={}), "INVALID_ARGUMENT",
         "version.kms.cryptvol.io is missing"),
        ("annotation key not a domain name", "Decrypt", dec(annotations={**ann, "Bad_Key": b""}),
         "INVALID_ARGUMENT", "is not a fully qualified domain name"),
        ("annotations over 32 kB", "Decrypt",
         dec(annotations={**ann, "big.example.com": b"x" * 33000}), "INVALID_ARGUMENT",
         "must be at most 32768"),
        ("empty ciphertext", "Decrypt", dec(ciphertext=b""), "INVALID_ARGUMENT", "is empty"),
        ("ciphertext over 1 kB", "Decrypt", dec(ciphertext=b"c" * 1025), "INVALID_ARGUMENT",
         "is 1025 bytes; at most 1024"),
        ("empty key_id", "Decrypt", dec(key_id=""), "INVALID_ARGUMENT", "key_id is empty"),
        ("key_id over 1 kB", "Decrypt", dec(key_id="k" * 1025), "INVALID_ARGUMENT",
         "is 1025 bytes; at most 1024"),
    ]


def test_each_bad_request_gets_a_clear_error(plugin: RunningKms) -> None:
    client = plugin.client
    assert client is not None
    good = client.encrypt(b"s" * 32)
    wrong = []
    for case, method, request, code, words in _bad_requests(good):
        with pytest.raises(grpc.RpcError) as raised:
            getattr(client.kms, method)(request, timeout=10)
        details = raised.value.details() or ""
        if raised.value.code().name != code or words not in details or len(details) > 400:
            wrong.append(f"{case}: {raised.value.code().name} {details!r}")
    assert wrong == []
    assert client.decrypt(good) == b"s" * 32  # nothing above disturbed it


def _wait_key_id(client: KmsClient, want: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.status().key_id != want:
        assert time.monotonic() < deadline, f"Status never reported {want}"
        time.sleep(0.1)


def test_rotation_with_a_running_plugin_changes_the_key_id_once_at_rotate(
    plugin: RunningKms, tmp_path: Path
) -> None:
    client = plugin.client
    assert client is not None
    state_args = ["--state-dir", str(tmp_path / "state")]
    seen_key_ids = [client.status().key_id]
    data: dict[bytes, pb.EncryptResponse] = {}

    def encrypt_and_check_all(tag: bytes) -> None:
        data[tag * 32] = client.encrypt(tag * 32)
        for plaintext, sealed in data.items():
            assert client.decrypt(sealed) == plaintext
        status = client.status()
        assert status.healthz == "ok"
        if status.key_id != seen_key_ids[-1]:
            seen_key_ids.append(status.key_id)

    encrypt_and_check_all(b"a")  # before prepare
    keys_cli("prepare", store_args=state_args)
    time.sleep(0.5)  # a few replica rounds: the plugin loads the prepared KEK
    encrypt_and_check_all(b"b")  # between prepare and rotate
    old = seen_key_ids[0]
    new = json.loads(keys_cli("status", "--json", store_args=state_args).stdout)["keks"][1]["id"]
    keys_cli("rotate", store_args=state_args)
    _wait_key_id(client, new)
    encrypt_and_check_all(b"c")  # after rotate
    assert seen_key_ids == [old, new]
    assert data[b"c" * 32].key_id == new and data[b"a" * 32].key_id == old

    refused = keys_cli("reencrypt", "--quiet", store_args=state_args, check=False)
    assert refused.returncode == 1
    assert f"KEK {old} was used by KMS plugin kms-a" in refused.stderr
    assert "kubectl get secrets -A -o json | kubectl replace -f -" in refused.stderr
    shown = keys_cli("status", store_args=state_args).stdout
    assert "KMS use" in shown and "(kms-a)" in shown
    encrypt_and_check_all(b"d")  # still everything decrypts
    keys_cli("reencrypt", "--quiet", "--retire-grace", "0", store_args=state_args)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.decrypt(data[b"a" * 32])
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"key {old} is retired" in (exc.details() or "")
            break
        assert time.monotonic() < deadline, "the retired KEK still decrypts"
        time.sleep(0.1)
    assert client.decrypt(data[b"c" * 32]) == b"c" * 32
    assert client.status().key_id == new


def encodings(secret: bytes) -> list[bytes]:
    return [
        secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
        base64.urlsafe_b64encode(secret), base64.b64encode(secret).rstrip(b"="),
    ]


def test_no_plaintext_kek_or_root_key_in_logs_errors_or_metrics(tmp_path: Path) -> None:
    from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
    from cryptvol.keys.manager import load_key_set
    from cryptvol.store.sqlite import SqliteStore

    root_key = tmp_path / "root.key"
    make_root_key(root_key)
    state = tmp_path / "state"
    address = f"127.0.0.1:{free_port()}"
    running = RunningKms(
        tmp_path, store_args=["--state-dir", str(state), "--root-key", str(root_key)],
        extra_args=["--metrics-address", address],
    )
    client = running.start()
    texts: list[str] = []
    plaintexts = [os.urandom(32) for _ in range(8)]
    sealed = [client.encrypt(p, uid=f"u{i}") for i, p in enumerate(plaintexts)]
    for p, s in zip(plaintexts, sealed, strict=True):
        assert client.decrypt(s) == p
    for case, method, request, _code, _words in _bad_requests(sealed[0]):
        try:
            getattr(client.kms, method)(request, timeout=10)
        except grpc.RpcError as exc:
            texts.append(f"{case}: {exc.details()} {exc.debug_error_string()}")
    for p in plaintexts[:3]:  # oversized plaintexts that embed the secret are refused too
        with pytest.raises(grpc.RpcError) as raised:
            client.encrypt(p * 40)
        texts.append(str(raised.value.details()))
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        metrics_text = r.read().decode()
    assert "cryptvol_kms_requests_total" in metrics_text
    texts.append(metrics_text)
    store = SqliteStore(state / "cryptvol.db")
    keks = [k.key.reveal() for k in load_key_set(store, RootKeyProvider(root_key)).keks.values()]
    store.close()
    assert running.stop() == 0
    texts.append(running.log_text())
    root = base64.b64decode(json.loads(root_key.read_text())["key"])
    haystack = "\n".join(texts).encode()
    assert b"<redacted>" in haystack  # debug logging showed the requests, masked
    for secret in [*plaintexts, *keks, root]:
        for form in encodings(secret):
            assert form not in haystack


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--listen", "tcp://127.0.0.1:1"], 1, "must be unix:///absolute/path"),
        (["--etcd-endpoints", "http://127.0.0.1:1"], 1, "give a root key file"),
        (["--root-key", "/nonexistent/root.key"], 1, "only `cryptvol keys init-root-key"),
        (["--etcd-endpoints", "ftp://x", "--root-key", "ROOT"], 1, "is not http(s)://HOST:PORT"),
        (["--metrics-address", "nonsense"], 1, "is not HOST:PORT"),
        (["--ttl", "0"], 2, "--ttl"),
        (["--no-such-flag"], 2, "No such option"),
    ],
)
def test_bad_flags_exit_non_zero_with_one_clear_line(
    tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    root_key = tmp_path / "root.key"
    root_key.write_text("x")
    args = [str(root_key) if a == "ROOT" else a for a in args]
    if "--listen" not in args:
        args = ["--listen", f"unix://{tmp_path}/kms.sock", *args]
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "kms", "serve", "--state-dir", str(tmp_path / "s"),
         *args],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")},
    )
    assert (result.returncode, words in result.stderr) == (code, True), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "kms.sock").exists()


def test_a_listen_path_naming_a_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    victim = tmp_path / "kms.sock"
    victim.write_text("precious")
    result = subprocess.run(
        [sys.executable, "-m", "cryptvol", "kms", "serve", "--listen", f"unix://{victim}",
         "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "is a regular file, not a unix socket" in result.stderr
    assert victim.read_text() == "precious"
    assert not (tmp_path / "s").exists()  # refused before any key was made


def test_a_plugin_over_an_emptied_store_makes_no_new_key_and_says_why(plugin: RunningKms
                                                                       ) -> None:
    """The Secrets a cluster wrote are wrapped by the KEKs in the KEK file: a plugin that
    made a first KEK over an emptied store would answer "ok" and lose them all."""
    assert plugin.client is not None
    assert plugin.client.status().healthz == "ok"
    assert plugin.stop() == 0
    state = plugin.work / "state"
    kek_file = (state / "kek.json").read_bytes()
    os.truncate(state / "cryptvol.db", 0)
    client = plugin.start(wait=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            status = client.status()
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, plugin.log_text()
            time.sleep(0.2)
    assert status.healthz != "ok"
    assert "holds no key set, but local file" in status.healthz
    assert "holds 1 KEK(s)" in status.healthz and "Restore it from a backup" in status.healthz
    assert (state / "kek.json").read_bytes() == kek_file
