import pytest

from support.manifests import KUSTOMIZATIONS, Object, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Object]]:
    """Each kustomization (base, overlays/...) and the objects it renders."""
    return {name: render(name) for name in KUSTOMIZATIONS}
