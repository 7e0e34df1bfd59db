import pytest

from support.driver import RunningDriver


@pytest.fixture(scope="session")
def driver(tmp_path_factory):
    """One driver for the node suite: starting Python under an emulated CPU costs seconds,
    so tests share it; each uses its own volume names. Crash tests restart it and leave it
    running again."""
    running = RunningDriver(tmp_path_factory.mktemp("driver"))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def csi(driver):
    return driver.client
