"""Storage pools: each configured pool is a backend instance (loop files, LVM thin, ZFS).

A pool has two sides that may run in different processes: its provisioner (create, grow,
delete backing volumes) and its node side (attach them as block devices here). The engine
chooses strategies from a pool's declared capabilities, never from its kind.
"""
