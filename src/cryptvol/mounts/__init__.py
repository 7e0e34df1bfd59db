"""cryptvol mounts layer."""
