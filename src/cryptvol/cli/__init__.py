"""The `cryptvol` command line."""
