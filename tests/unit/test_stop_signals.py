"""system.signals.StopSignals: a SIGTERM is seen whichever thread the kernel hands it to."""

import faulthandler
import signal
import threading
import time

import pytest

from cryptvol.system.signals import StopSignals


@pytest.fixture
def own_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    faulthandler.unregister(signal.SIGUSR1)


def test_a_sigterm_delivered_to_another_thread_ends_the_wait(own_handlers):
    """Seen: a driver whose SIGTERM went to a gRPC thread while its main thread slept in a
    lock, forever. Here the signal goes to a thread that blocks for good, as those do."""
    signals = StopSignals()
    parked = threading.Event()
    other = threading.Thread(target=parked.wait, daemon=True)
    other.start()
    main = threading.get_ident()
    # A watchdog: if the wait misses the SIGTERM, SIGINT to the main thread ends it (and
    # the test fails on the name) instead of hanging the run.
    watchdog = threading.Timer(10, lambda: signal.pthread_kill(main, signal.SIGINT))
    watchdog.start()
    try:
        started = time.monotonic()
        signal.pthread_kill(other.ident, signal.SIGTERM)
        assert signals.wait() == "SIGTERM"
        assert time.monotonic() - started < 5
    finally:
        watchdog.cancel()
        parked.set()


def test_a_signal_during_start_up_is_kept_for_the_wait(own_handlers):
    signals = StopSignals()
    signal.raise_signal(signal.SIGINT)
    assert signals.wait() == "SIGINT"


def test_sigusr1_dumps_the_stacks_and_stops_nothing(own_handlers, capfd):
    signals = StopSignals()
    signal.raise_signal(signal.SIGUSR1)
    assert "test_sigusr1_dumps_the_stacks_and_stops_nothing" in capfd.readouterr().err
    signal.raise_signal(signal.SIGTERM)
    assert signals.wait() == "SIGTERM"
