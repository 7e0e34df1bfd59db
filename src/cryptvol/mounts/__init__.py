"""The ways an opened volume reaches a workload: publish modes.

- `host`: a filesystem on the dm-crypt mapping, mounted at the staging path and
  bind-mounted at each target;
- `block`: the mapping's device node bind-mounted onto a file at the target (raw block);
- `kata`: a Kata Containers direct-assigned volume: Kata's mountInfo.json names the mapping
  (`direct_volumes`), the guest mounts it, the shim (`kata_shim`) resizes and measures it.

Each mode is a module with one class that follows `modes.PublishMode`; a new way to reach
a workload is a new module. `filesystem`, `mountinfo` and `ownership` (a pod's fsGroup) are
the primitives they share.
"""
