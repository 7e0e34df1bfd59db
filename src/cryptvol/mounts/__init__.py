"""The ways an opened volume reaches a workload: publish modes.

- `host`: a filesystem on the dm-crypt mapping, mounted at the staging path and
  bind-mounted at each target;
- `block`: the mapping's device node bind-mounted onto a file at the target (raw block).

Each mode is a module with one class that follows `modes.PublishMode`; a new way to reach
a workload is a new module. `filesystem` and `mountinfo` are the primitives they share.
"""
