"""cryptvol engine layer."""
