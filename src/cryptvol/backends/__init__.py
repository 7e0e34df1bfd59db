"""cryptvol backends layer."""
