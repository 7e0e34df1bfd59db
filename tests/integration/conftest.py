import pytest

from support.driver import RunningDriver


@pytest.fixture(scope="module")
def shared_driver(tmp_path_factory):
    """One real driver for a whole module, for tests that only read or add their own volumes."""
    running = RunningDriver(tmp_path_factory.mktemp("driver"))
    running.start()
    yield running
    running.stop()
