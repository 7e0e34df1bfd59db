"""cryptvol keys layer."""
