"""cryptvol: LUKS2-encrypted persistent volumes for Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

DRIVER_NAME = "cryptvol.io"
TOPOLOGY_KEY = "cryptvol.io/node"

try:
    __version__ = version("cryptvol")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
