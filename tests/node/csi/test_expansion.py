"""Online and offline expansion on real dm-crypt, for managed and passphrase volumes, with
the volume key in the kernel keyring and in the dm table."""

import subprocess

import grpc
import pytest

from cryptvol.csi.gen import csi_pb2 as pb
from support.co import MIB, create_volume

PASSPHRASE = "correct horse battery staple 8d1f"
SECRETS = {"passphrase": PASSPHRASE}
# Cheap argon2 so the emulated CPU of the test VM unlocks in about a second.
ARGON2_LIGHT = {"pbkdf": "argon2id", "pbkdfMemory": "32768", "iterTime": "100"}


def _params(key_source: str, keyring: bool) -> dict[str, str]:
    params = {"volumeKeyInKeyring": "true" if keyring else "false"}
    if key_source == "secret":
        params |= {"keySource": "secret", **ARGON2_LIGHT}
    return params


def _new(csi, tmp_path, name, kind, key_source="managed", keyring=True, size=64 * MIB):
    secrets = SECRETS if key_source == "secret" else {}
    return create_volume(
        csi,
        tmp_path,
        name,
        kind,
        size=size,
        parameters=_params(key_source, keyring),
        secrets=secrets,
    )


def _key_in_table(vol) -> bool:
    name = vol.csi.controller.ListVolumes(pb.ListVolumesRequest())
    mapping = next(
        e.volume.volume_context["mapping"]
        for e in name.entries
        if e.volume.volume_id == vol.volume_id
    )
    table = subprocess.run(
        ["dmsetup", "table", "--showkeys", mapping], capture_output=True, text=True, check=True
    ).stdout
    return ":logon:" not in table


@pytest.mark.parametrize("keyring", [True, False], ids=["keyring", "dm-table"])
@pytest.mark.parametrize("key_source", ["managed", "secret"])
@pytest.mark.parametrize("kind", ["ext4", "xfs", "block"])
def test_online_expansion_twice_keeps_data(csi, tmp_path, kind, key_source, keyring):
    vol = _new(csi, tmp_path, f"grow-{kind}-{key_source}-{keyring}", kind, key_source, keyring)
    vol.stage()
    vol.publish()
    assert _key_in_table(vol) == (not keyring)
    digest = vol.write()
    size = 320 * MIB if kind == "xfs" else 64 * MIB
    for step in (1, 2):
        size += 64 * MIB
        before = vol.size_seen()
        assert vol.expand(size) >= size
        assert vol.size_seen() > before, f"did not grow at step {step}"
        assert vol.checksum() == digest
    vol.cycle(digest)
    vol.release()
    vol.delete()


def test_a_volume_expanded_while_unstaged_grows_when_next_published(csi, tmp_path):
    """Offline expansion: the resizer marks the claim, and kubelet calls NodeExpandVolume once
    the next pod has the volume staged and published."""
    vol = _new(csi, tmp_path, "offline", "ext4", "secret")
    vol.stage()
    vol.publish()
    digest = vol.write()
    before = vol.size_seen()
    vol.release()
    vol.stage()
    vol.publish()
    assert vol.expand(160 * MIB) >= 160 * MIB
    assert vol.size_seen() > before + 64 * MIB
    assert vol.checksum() == digest
    vol.release()


def test_a_crash_after_the_backing_volume_grew_completes_on_retry(driver, tmp_path):
    vol = _new(driver.client, tmp_path, "crash-backing", "ext4")
    vol.stage()
    vol.publish()
    digest = vol.write()
    before = vol.size_seen()
    vol.csi = driver.restart(failpoints="expand:after-backing")
    with pytest.raises(grpc.RpcError) as info:
        _node_expand(vol, 160 * MIB, {})
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    driver.wait_killed()
    vol.csi = driver.restart()
    assert vol.expand(160 * MIB) >= 160 * MIB
    assert vol.size_seen() > before + 64 * MIB
    assert vol.checksum() == digest
    vol.release()


def test_a_crash_between_resize_and_filesystem_grow_completes_on_retry(driver, tmp_path):
    vol = _new(driver.client, tmp_path, "crash-grow", "ext4", "secret")
    vol.stage()
    vol.publish()
    digest = vol.write()
    before = vol.size_seen()
    vol.csi = driver.restart(failpoints="expand:after-resize")
    with pytest.raises(grpc.RpcError) as info:
        vol.csi.node.NodeExpandVolume(
            pb.NodeExpandVolumeRequest(
                volume_id=vol.volume_id,
                volume_path=str(vol.target),
                capacity_range=pb.CapacityRange(required_bytes=160 * MIB),
                secrets=SECRETS,
            )
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    driver.wait_killed()
    vol.csi = driver.restart()
    assert vol.size_seen() == before  # the mapping grew, the filesystem not yet
    assert vol.expand(160 * MIB) >= 160 * MIB
    assert vol.size_seen() > before
    assert vol.checksum() == digest
    vol.release()


def _node_expand(vol, size, secrets):
    return vol.csi.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id,
            volume_path=str(vol.target),
            capacity_range=pb.CapacityRange(required_bytes=size),
            secrets=secrets,
        )
    )


def _node_expand_range(vol, required, limit):
    return vol.csi.node.NodeExpandVolume(
        pb.NodeExpandVolumeRequest(
            volume_id=vol.volume_id,
            volume_path=str(vol.target),
            capacity_range=pb.CapacityRange(required_bytes=required, limit_bytes=limit),
            secrets=SECRETS,
        )
    )


BAD_EXPANSIONS = [
    (
        "no node-expand secret",
        lambda v: _node_expand(v, 128 * MIB, {}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "node-expand-secret-name",
    ),
    (
        "secret without the configured key",
        lambda v: _node_expand(v, 128 * MIB, {"pw": "x"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no key 'passphrase'",
    ),
    (
        "wrong passphrase",
        lambda v: _node_expand(v, 128 * MIB, {"passphrase": "wrong"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not unlock",
    ),
    (
        "limit below the current size",
        lambda v: _node_expand_range(v, 0, 32 * MIB),
        grpc.StatusCode.OUT_OF_RANGE,
        "below the volume's current size",
    ),
    (
        "size beyond the pool",
        lambda v: _node_expand(v, 1 << 50, SECRETS),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "may promise",
    ),
]


@pytest.mark.parametrize(
    ("attempt", "code", "says"), [c[1:] for c in BAD_EXPANSIONS], ids=[c[0] for c in BAD_EXPANSIONS]
)
def test_bad_expansions_are_refused_and_the_volume_still_works(csi, tmp_path, attempt, code, says):
    vol = _new(csi, tmp_path, "bad-grow-" + str(abs(hash(says)) % 10_000), "ext4", "secret")
    vol.stage()
    vol.publish()
    digest = vol.write()
    with pytest.raises(grpc.RpcError) as info:
        attempt(vol)
    assert info.value.code() == code, info.value.details()
    assert says in info.value.details()
    assert PASSPHRASE not in info.value.details()
    assert vol.checksum() == digest
    vol.cycle(digest)
    vol.release()
    vol.delete()


def test_the_passphrase_appears_in_no_log_argv_or_environment(driver, tmp_path):
    vol = _new(driver.client, tmp_path, "canary-pass", "ext4", "secret")
    vol.stage()
    vol.publish()
    vol.write()
    vol.expand(128 * MIB)
    try:
        _node_expand(vol, 128 * MIB, {"passphrase": PASSPHRASE + "-wrong"})
    except grpc.RpcError as exc:
        assert PASSPHRASE not in (exc.details() or "")
    vol.release()
    vol.delete()
    import json

    haystack = "\n".join(driver.log_lines()) + json.dumps(driver.audit())
    assert PASSPHRASE not in haystack
    assert PASSPHRASE.encode().hex() not in haystack
