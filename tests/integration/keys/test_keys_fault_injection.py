"""SIGKILL fault injection over a full KEK rotation of 10,000 DEKs.

For each seed, the CLI (`python -m cryptvol.cli.keys prepare|rotate|reencrypt`) is run as a
real process and killed with SIGKILL after a random delay, again and again, then run to
completion; meanwhile this test creates and deletes volumes through its own key manager, as a
controller would. After every kill and at the end: the key set loads, every DEK that should
exist unwraps to the bytes it was made with, no deleted one came back, none is lost; at the
end every DEK is wrapped by the new KEK and the retired KEK's material is gone.
20 seeds run on SQLite and 3 on a real one-member etcd.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cryptvol.keys import envelope
from cryptvol.keys.kek import KekProvider
from cryptvol.keys.kek_local import LocalKekProvider
from cryptvol.keys.kek_rootkey import RootKeyProvider, make_root_key
from cryptvol.keys.keyset import DEK_PREFIX, dek_key
from cryptvol.keys.manager import KeyManager, load_key_set, open_local
from cryptvol.keys.rotation import Rotation
from cryptvol.store.base import Put, Store
from cryptvol.store.etcd import EtcdStore
from cryptvol.store.sqlite import SqliteStore
from cryptvol.system.secret import Secret
from support.etcd_cluster import EtcdCluster

N_DEKS = 10_000
NEXT_COMMAND = {
    "start": "prepare",
    "prepare": "rotate",
    "rotate": "reencrypt",
    "reencrypt_request": "reencrypt",
    "reencrypt_active": "reencrypt",
}


@dataclass
class World:
    """The store under test, how the CLI reaches it, and what must be in it."""

    store: Store
    provider: KekProvider
    cli_args: list[str]
    expected: dict[str, bytes]
    deleted: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def seed_deks(world: World, batch: int) -> None:
    current = load_key_set(world.store, world.provider).current
    items = [(f"pvc-{i:05d}", os.urandom(32)) for i in range(N_DEKS)]
    for start in range(0, N_DEKS, batch):
        chunk = items[start : start + batch]
        world.store.txn(
            [], [Put(dek_key(v), envelope.wrap(current, Secret(d), v)) for v, d in chunk]
        )
    world.expected.update(items)


def check(world: World, *, final: bool) -> None:
    loaded = load_key_set(world.store, world.provider, create=False)
    entries = {e.key[len(DEK_PREFIX) :]: e.value for e in world.store.range(DEK_PREFIX)}
    with world.lock:
        expected = dict(world.expected)
        deleted = set(world.deleted)
    assert set(entries) == set(expected), (
        f"lost {sorted(set(expected) - set(entries))[:5]},"
        f" resurrected {sorted(set(entries) & deleted)[:5]}"
    )
    for volume, raw in entries.items():
        assert envelope.unwrap(raw, volume, loaded.find).reveal() == expected[volume]
    for kek_id in {envelope.peek_kek_id(raw, what=v) for v, raw in entries.items()}:
        assert not loaded.record.is_retired(kek_id)
    if final:
        current = loaded.record.current.id
        assert all(envelope.names_kek(raw, current) for raw in entries.values())
        assert loaded.record.stage == "reencrypt_finished" and len(loaded.record.retired) == 1
        if isinstance(world.provider, LocalKekProvider):
            assert not set(world.provider.load_all()) & {r.id for r in loaded.record.retired}


class Churn:
    """Creates and deletes volumes through a key manager while the CLI rotates."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.km = KeyManager(world.store, world.provider)
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.step = threading.Lock()  # held for each create or delete and its bookkeeping
        self.n = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.is_set():
            if not self.running.wait(0.05):
                continue
            with self.step:
                self._one_step()
            time.sleep(0.01)

    def _one_step(self) -> None:
        w = self.world
        if self.rng.random() < 0.6:
            volume = f"churn-{self.n:05d}"
            self.n += 1
            dek = self.km.create_dek(volume).reveal()
            with w.lock:
                w.expected[volume] = dek
        else:
            with w.lock:
                volume = self.rng.choice(sorted(w.expected))
            self.km.delete_dek(volume)
            with w.lock:
                del w.expected[volume]
                w.deleted.add(volume)

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def cli(command: str, world: World) -> list[str]:
    return (
        [sys.executable, "-m", "cryptvol.cli.keys", command, "--wait", "10"]
        + (["--quiet", "--batch", "100"] if command == "reencrypt" else [])
        + world.cli_args
    )


def rotate_with_kills(world: World, rng: random.Random, timing: dict[str, float]) -> list[str]:
    """Drive one rotation to reencrypt_finished, SIGKILLing the CLI at random; return where
    each kill landed (the command, and the stage and reencrypt cursor it left).

    Each command is killed up to twice, after a random 25% to 100% of `timing` (how long it
    takes unkilled): a run killed later than that would have finished."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTVOL_")}
    rotation = Rotation(world.store)
    first_current = rotation.read()[0].current.id
    kills: list[str] = []
    killed: dict[str, int] = {"prepare": 0, "rotate": 0, "reencrypt": 0}
    with Churn(world, random.Random(rng.random())) as churn:
        for _ in range(40):
            record, _ = rotation.read()
            if record.stage == "reencrypt_finished" and record.current.id != first_current:
                break
            command = NEXT_COMMAND[record.stage]
            churn.running.set()
            proc = subprocess.Popen(
                cli(command, world),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if killed[command] < 2 and rng.random() < 0.9:
                time.sleep(rng.uniform(0.25, 1.0) * timing[command])
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    killed[command] += 1
                    cursor, _ = rotation.cursor()
                    done = f" at {cursor.done}/{cursor.total}" if cursor else ""
                    kills.append(f"{command}->{rotation.read()[0].stage}{done}")
            _, err = proc.communicate(timeout=300)
            churn.running.clear()
            if proc.returncode not in (0, -signal.SIGKILL):
                # A transition may be refused after a killed run already applied it.
                assert b"cannot" in err or b"changed" in err, err.decode()
            with churn.step:  # no create or delete half done while checking
                check(world, final=False)
        else:
            pytest.fail("the rotation did not finish in 40 runs")
    # Run once more, unkilled: a kill between retiring the old KEK and forgetting its
    # material leaves the material behind, and a finished reencrypt run again removes it.
    subprocess.run(
        [sys.executable, "-m", "cryptvol.cli.keys", "reencrypt", "--quiet", *world.cli_args],
        env=env,
        check=True,
        capture_output=True,
    )
    check(world, final=True)
    return kills


@pytest.fixture(scope="module")
def sqlite_template(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, bytes]]]:
    base = tmp_path_factory.mktemp("template")
    store, km = open_local(base)
    world = World(store, km.provider, [], {})
    seed_deks(world, batch=1000)
    store.close()
    yield base, world.expected


@pytest.fixture(scope="module")
def sqlite_timing(
    sqlite_template: tuple[Path, dict[str, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, float]:
    """How long each command takes here, unkilled, on a copy of the template."""
    state = tmp_path_factory.mktemp("timing") / "state"
    shutil.copytree(sqlite_template[0], state)
    world = World(
        SqliteStore(state / "cryptvol.db"), LocalKekProvider(state), ["--state-dir", str(state)], {}
    )
    timing = {}
    for command in ("prepare", "rotate", "reencrypt"):
        started = time.monotonic()
        subprocess.run(cli(command, world), check=True, capture_output=True)
        timing[command] = time.monotonic() - started
    world.store.close()
    return timing


@pytest.mark.parametrize("seed", range(20))
def test_sigkill_during_rotation_on_sqlite_loses_no_key(
    seed: int,
    sqlite_template: tuple[Path, dict[str, bytes]],
    sqlite_timing: dict[str, float],
    tmp_path: Path,
) -> None:
    template, deks = sqlite_template
    state = tmp_path / "state"
    shutil.copytree(template, state)
    store = SqliteStore(state / "cryptvol.db")
    world = World(store, LocalKekProvider(state), ["--state-dir", str(state)], dict(deks))
    try:
        kills = rotate_with_kills(world, random.Random(seed), sqlite_timing)
    finally:
        store.close()
    print(f"seed {seed}: killed {len(kills)}x: {', '.join(kills)}")


@pytest.mark.parametrize("seed", range(100, 103))
def test_sigkill_during_rotation_on_etcd_loses_no_key(seed: int, tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path / "etcd").start()
    try:
        root_key = tmp_path / "root.key"
        make_root_key(root_key)
        store = EtcdStore(cluster.endpoints)
        args = ["--etcd-endpoints", cluster.endpoints, "--root-key", str(root_key)]
        world = World(store, RootKeyProvider(root_key), args, {})
        seed_deks(world, batch=100)
        # Measured here for 10,000 DEKs on one loopback member (reencrypt ~3 s).
        timing = {"prepare": 0.5, "rotate": 0.5, "reencrypt": 3.0}
        kills = rotate_with_kills(world, random.Random(seed), timing)
        store.close()
        print(f"seed {seed}: killed {len(kills)}x: {', '.join(kills)}")
    finally:
        cluster.stop()
