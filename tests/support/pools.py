"""The pools the node suite's shared driver serves, by kind: a test that must hold for every
kind runs once per pool named here."""

POOLS = {"loop": "default", "lvmthin": "thin", "zfs": "zfs"}
