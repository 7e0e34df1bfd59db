"""cryptvol csi layer."""
