"""Real argon2 unlocks in parallel through the node's budget: the cryptsetup processes'
summed resident memory stays within it."""

from __future__ import annotations

import threading
from pathlib import Path

from cryptvol.luks import cryptsetup
from cryptvol.luks.budget import CRYPTSETUP_PROCESS_KIB, MemoryBudget
from cryptvol.luks.cryptsetup import FormatOptions
from cryptvol.system.secret import Secret
from support.rss import cryptsetup_rss_kib

PASSPHRASE = Secret(b"correct horse battery staple")
ARGON2_KIB = 32 * 1024


def _cryptsetup_rss_kib() -> int:
    return cryptsetup_rss_kib()[0]


def test_parallel_argon2_unlocks_stay_within_the_budget(header: Path) -> None:
    cryptsetup.format_device(str(header), PASSPHRASE, FormatOptions(
        pbkdf="argon2id", pbkdf_memory_kib=ARGON2_KIB, pbkdf_force_iterations=4))
    assert cryptsetup.keyslot_memory_kib(str(header)) == ARGON2_KIB
    per_unlock = ARGON2_KIB + CRYPTSETUP_PROCESS_KIB
    budget = MemoryBudget(2 * per_unlock)  # two unlocks at a time
    peak = 0
    unlocked: list[bool] = []
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _cryptsetup_rss_kib())
            stop.wait(0.002)

    def unlock() -> None:
        with budget.reserve(per_unlock, timeout=120):
            unlocked.append(cryptsetup.test_key(str(header), PASSPHRASE))

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=unlock) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    sampler.join()
    assert unlocked == [True] * 8
    # At least one argon2 unlock was seen holding its memory, and never more than the budget.
    assert ARGON2_KIB <= peak <= budget.total_kib
