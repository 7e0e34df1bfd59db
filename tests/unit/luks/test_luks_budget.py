"""The node's unlock memory budget: unlocks wait their turn, bounded, and never overrun it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from cryptvol.errors import ResourceExhausted
from cryptvol.luks.budget import (
    MIN_DEFAULT_BUDGET_KIB,
    MemoryBudget,
    default_budget_kib,
)
from cryptvol.luks.probe import HostProbe

MakeHost = Callable[..., HostProbe]  # the make_host fixture (conftest.py)


def test_a_reservation_that_fits_is_granted_and_given_back() -> None:
    budget = MemoryBudget(1000)
    with budget.reserve(600, timeout=1):
        assert budget.in_use_kib == 600
        with budget.reserve(400, timeout=1):
            assert budget.in_use_kib == 1000
    assert budget.in_use_kib == 0


def test_more_than_the_whole_budget_fails_at_once() -> None:
    budget = MemoryBudget(1000)
    started = time.monotonic()
    with (
        pytest.raises(ResourceExhausted, match="more than the node's whole unlock budget"),
        budget.reserve(1001, timeout=30),
    ):
        pass
    assert time.monotonic() - started < 0.5


def test_a_wait_that_runs_out_raises_resource_exhausted() -> None:
    budget = MemoryBudget(1000)
    with budget.reserve(800, timeout=1):
        started = time.monotonic()
        with (
            pytest.raises(ResourceExhausted) as err,
            budget.reserve(300, timeout=0.2, what="NodeStage of vol-1"),
        ):
            pass
        waited = time.monotonic() - started
    assert 0.2 <= waited < 1.0
    message = str(err.value)
    assert message.startswith("NodeStage of vol-1 waited 0.2 s")
    assert "held by 1 unlocks" in message
    assert budget.in_use_kib == 0
    assert budget.waiting == 0


def test_parallel_unlocks_wait_their_turn_and_never_overrun() -> None:
    budget = MemoryBudget(1000)
    lock = threading.Lock()
    in_use = 0
    peak = 0
    done: list[int] = []

    def unlock(n: int) -> None:
        nonlocal in_use, peak
        with budget.reserve(400, timeout=10):
            with lock:
                in_use += 400
                peak = max(peak, in_use)
            time.sleep(0.05)
            with lock:
                in_use -= 400
        done.append(n)

    threads = [threading.Thread(target=unlock, args=(n,)) for n in range(12)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == list(range(12))
    assert peak == 800  # two at a time fit in 1000
    # Twelve 50 ms unlocks two at a time take at least six rounds.
    assert time.monotonic() - started >= 0.3


def test_first_come_first_served_so_a_large_unlock_is_not_starved() -> None:
    budget = MemoryBudget(1000)
    order: list[str] = []
    first = budget.reserve(500, timeout=1)
    first.__enter__()

    def take(name: str, kib: int) -> None:
        with budget.reserve(kib, timeout=5):
            order.append(name)

    large = threading.Thread(target=take, args=("large", 900))
    large.start()
    while budget.waiting < 1:
        time.sleep(0.01)
    small = threading.Thread(target=take, args=("small", 100))
    small.start()
    while budget.waiting < 2:
        time.sleep(0.01)
    # The small one would fit now, but the large one came first.
    time.sleep(0.1)
    assert order == []
    first.__exit__(None, None, None)
    large.join()
    small.join()
    assert order == ["large", "small"]


def test_a_timed_out_head_of_the_queue_lets_the_next_one_through() -> None:
    budget = MemoryBudget(1000)
    results: dict[str, str] = {}
    holder = budget.reserve(500, timeout=1)
    holder.__enter__()

    def take(name: str, kib: int, timeout: float) -> None:
        try:
            with budget.reserve(kib, timeout=timeout):
                results[name] = "granted"
        except ResourceExhausted:
            results[name] = "exhausted"

    large = threading.Thread(target=take, args=("large", 900, 0.2))
    large.start()
    while budget.waiting < 1:
        time.sleep(0.01)
    small = threading.Thread(target=take, args=("small", 100, 5))
    small.start()
    large.join()
    small.join()
    holder.__exit__(None, None, None)
    assert results == {"large": "exhausted", "small": "granted"}


def test_the_default_budget_is_a_quarter_of_usable_memory(make_host: MakeHost) -> None:
    assert default_budget_kib(make_host(memory_kib=16 * 1024 * 1024)) == 4 * 1024 * 1024
    limited = make_host(memory_kib=16 * 1024 * 1024, cgroup_memory_limit_kib=2 * 1024 * 1024)
    assert default_budget_kib(limited) == 512 * 1024
    assert default_budget_kib(make_host(memory_kib=100 * 1024)) == MIN_DEFAULT_BUDGET_KIB
    assert MemoryBudget.for_host(make_host()).total_kib == default_budget_kib(make_host())
