"""The pools the node suite's shared driver serves, by kind: a test that must hold for every
kind runs once per pool named here."""

POOLS = {"loop": "default", "lvmthin": "thin", "zfs": "zfs"}
# One more loop pool, on a 96 MiB tmpfs, for tests that fill a pool (not one per kind).
TINY = "tiny"
TINY_POOL_BYTES = 96 * 1024 * 1024
