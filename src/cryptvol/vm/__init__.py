"""cryptvol vm layer."""
