"""cryptvol luks layer."""
