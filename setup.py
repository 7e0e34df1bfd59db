"""Build hook: generate the gRPC stubs (CSI, KMS v2, etcd) from their .proto whenever the
package is built.

All metadata lives in pyproject.toml. This file only swaps in a build_py that runs
scripts/gen_proto.py first, which covers `pip install .` (wheel) and `pip install -e .`
(PEP 660 editable: the generated files land in src/, which the editable install maps).
grpc_tools must be importable at build time (pyproject's [build-system].requires).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What scripts/gen_proto.py writes: one `gen` package per API.
GENERATED = {
    "cryptvol.csi.gen": ROOT / "src" / "cryptvol" / "csi" / "gen",
    "cryptvol.kms.gen": ROOT / "src" / "cryptvol" / "kms" / "gen",
    "cryptvol.store.gen": ROOT / "src" / "cryptvol" / "store" / "gen",
}


def _generate_stubs() -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        # Builds without grpcio-tools keep working from already generated stubs.
        print(
            "warning: grpc_tools is not importable, gRPC stubs not regenerated; "
            "add grpcio-tools to [build-system].requires",
            file=sys.stderr,
        )
        return
    script = ROOT / "scripts" / "gen_proto.py"
    spec = importlib.util.spec_from_file_location("cryptvol_gen_proto", script)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {script}")
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.generate()


class BuildPyWithStubs(build_py):
    """build_py that generates the `gen` packages before collecting the packages."""

    def run(self) -> None:
        _generate_stubs()
        # Package discovery ran before the generated packages existed on a clean checkout.
        packages = self.packages if self.packages is not None else []
        for package, directory in GENERATED.items():
            if directory.is_dir() and package not in packages:
                packages.append(package)
            # Ship the typing stub next to the module; build_py only collects *.py by itself.
            self.package_data.setdefault(package, []).append("*.pyi")
        self.packages = packages
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
