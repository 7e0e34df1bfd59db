"""The Kata shim client against stand-in shims on unix sockets (no Kata sandbox can run here;
tests/support/kata_shim.py answers the routes and bodies of the Go shim and runtime-rs)."""

import tempfile
from pathlib import Path

import pytest

from cryptvol.errors import FailedPrecondition, InvalidArgument, Unavailable
from cryptvol.mounts.kata_shim import ShimClient
from support.kata_shim import FakeShim

DEVICE = "/dev/mapper/cryptvol-0123456789abcdef"
SANDBOX = "f" * 64


@pytest.fixture
def dirs():
    # Short: a unix socket path must fit in 108 bytes, and sandbox ids are 64 characters.
    with tempfile.TemporaryDirectory(prefix="ks", dir="/tmp") as tmp:
        yield Path(tmp) / "sbs", Path(tmp) / "kata"


@pytest.mark.parametrize("flavor", ["go", "rs"])
def test_stats_and_resize_speak_each_runtimes_dialect(dirs, flavor):
    shim = FakeShim(dirs[0] if flavor == "go" else dirs[1], SANDBOX, DEVICE, flavor)
    try:
        client = ShimClient(*dirs)
        found = client.socket(SANDBOX)
        assert found.flavor == flavor
        usage = client.stats(found, DEVICE)
        assert (usage.total_bytes, usage.used_bytes, usage.total_inodes) == \
            (64 << 20, 5 << 20, 16384)
        client.resize(found, DEVICE, 128 << 20)
        body = shim.resizes()[-1]
        assert body == ({"VolumePath": DEVICE, "Size": 128 << 20} if flavor == "go"
                        else {"volume_guest_path": DEVICE, "size": 128 << 20})
        assert shim.calls[0][0] == ("GET" if flavor == "go" else "POST")
    finally:
        shim.stop()


def test_a_refusing_shim_says_why_and_a_dead_one_is_unavailable(dirs):
    shim = FakeShim(dirs[0], SANDBOX, DEVICE)
    client = ShimClient(*dirs)
    found = client.socket(SANDBOX)
    shim.refuse_resize = "resize_volume is not implemented in kata-agent"
    with pytest.raises(FailedPrecondition, match=r"HTTP 500.*not implemented in kata-agent"):
        client.resize(found, DEVICE, 1 << 30)
    shim.stop()
    assert client.socket(SANDBOX) is None
    shim.socket_path.parent.mkdir(parents=True, exist_ok=True)
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(shim.socket_path))  # a socket file nobody listens on
    try:
        with pytest.raises(Unavailable, match="cannot be reached"):
            client.stats(client.socket(SANDBOX), DEVICE)
    finally:
        stale.close()


def test_a_sandbox_id_that_is_a_path_is_refused(dirs):
    with pytest.raises(InvalidArgument):
        ShimClient(*dirs).socket("../../etc")
