import pytest

from support.driver import RunningDriver


@pytest.fixture
def driver(tmp_path):
    running = RunningDriver(tmp_path / "driver")
    running.work.mkdir()
    running.start()
    yield running
    running.stop()


@pytest.fixture
def csi(driver):
    return driver.client
