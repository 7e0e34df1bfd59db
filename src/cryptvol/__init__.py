"""cryptvol: LUKS2-encrypted persistent volumes for Kubernetes."""

DRIVER_NAME = "cryptvol.io"
TOPOLOGY_KEY = "cryptvol.io/node"


def __getattr__(name: str) -> str:
    # The version is looked up on first use: importlib.metadata costs every command's start
    # (seconds on the test VM's emulated CPU), and most never need it.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("cryptvol")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0.0.0"
    raise AttributeError(f"module 'cryptvol' has no attribute {name!r}")
