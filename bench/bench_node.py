#!/usr/bin/env python3
"""Node benchmarks on real dm-crypt: what encryption costs a pod's start, beside no LUKS.

Run where dm-crypt exists, e.g. `cryptvol vm run -- .venv/bin/python bench/bench_node.py
stage` (the VM runs under TCG here: absolute figures are the emulator's; ratios are what
carries over). Prints numbers, asserts nothing.

  stage    NodeStageVolume and NodePublishVolume of one managed ext4 volume through the
           driver, p50 and p95 over the rounds (each round also unpublishes and unstages),
           beside the same steps on the same size without the driver:
             plain   losetup, mount (mkfs once before the rounds), bind mount;
             luks    losetup, `cryptsetup open` (a pbkdf2 header as the managed volume's),
                     mount, bind mount: the part of the driver's restage that is LUKS.
           Goal (issue 15): the driver's restage within 1.3x the plain one. "driver - luks"
           is the driver's own time (gRPC, records, key unwrap, checks); "luks - plain" is
           what opening the mapping costs.
  restage  N managed volumes (default 64, 16 MiB ext4), each formatted once, then the driver
           restarted (a node reboot) and all N staged at once: wall time and the peak
           resident memory of the driver and its children; beside N plain volumes (losetup
           and mount) attached at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cryptvol.luks import cryptsetup
from cryptvol.luks.policy import parse_luks_parameters, plan
from cryptvol.luks.probe import probe_host
from cryptvol.system import run
from cryptvol.system.secret import Secret
from support.co import MIB, Volume, create_volume
from support.driver import RunningDriver
from support.rss import PeakSampler


def _ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _p(values: list[float]) -> tuple[float, float]:
    p95 = statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]
    return statistics.median(values), p95


class Plain:
    """An ext4 filesystem on a loop device, staged and published the way the driver does,
    optionally through a LUKS mapping (`luks`): the same commands, no driver."""

    def __init__(self, work: Path, name: str, size: int, luks: bool) -> None:
        self.work, self.name, self.luks = work, name, luks
        self.backing = work / f"{name}.img"
        self.staging, self.target = work / f"{name}-staging", work / f"{name}-target"
        self.staging.mkdir()
        self.target.mkdir()
        with open(self.backing, "wb") as f:
            f.truncate(size)
        self.key = Secret(os.urandom(32))
        self.mapping = f"bench-{name}-{os.getpid()}"
        self.loop = ""
        device = self._attach()
        if luks:
            managed = plan(parse_luks_parameters({}), "managed", probe_host())
            cryptsetup.format_device(device, self.key, managed.format)
            self.open_options = managed.open
            device = self._open()
        run(["mkfs.ext4", "-q", device], timeout=300)
        self.unpublish_unstage()

    @property
    def device(self) -> str:
        return f"/dev/mapper/{self.mapping}" if self.luks else self.loop

    def _attach(self) -> str:
        self.loop = run(["losetup", "--find", "--show", str(self.backing)]).stdout.strip()
        return self.loop

    def _open(self) -> str:
        cryptsetup.open_device(self.loop, self.mapping, self.key, self.open_options)
        return self.device

    def stage(self) -> None:
        self._attach()
        if self.luks:
            self._open()
        run(["mount", "-t", "ext4", self.device, str(self.staging)])

    def publish(self) -> None:
        run(["mount", "--bind", str(self.staging), str(self.target)])

    def unpublish_unstage(self) -> None:
        if os.path.ismount(self.target):
            run(["umount", str(self.target)])
        if os.path.ismount(self.staging):
            run(["umount", str(self.staging)])
        if self.luks:
            cryptsetup.close_device(self.mapping)
        run(["losetup", "--detach", self.loop])


@contextmanager
def running_driver(work: Path, log_level: str = "info") -> Iterator[RunningDriver]:
    # The volumes are sparse and mostly empty; the VM's tmpfs pool holds 64 of them only
    # when the driver may promise more than its size.
    driver = RunningDriver(work / "driver", log_level=log_level,
                           extra_args=["--overcommit-ratio", "4"])
    driver.work.mkdir(exist_ok=True)  # a restart finds its state there
    driver.start()
    try:
        yield driver
    finally:
        driver.stop()


def stage(rounds: int, size_mib: int) -> None:
    size = size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        work = Path(tmp)
        plain = Plain(work, "plain", size, luks=False)
        luks = Plain(work, "luks", size, luks=True)
        # At debug level the driver logs each command it runs with its duration.
        with running_driver(work, "debug") as driver:
            assert driver.client is not None
            vol = create_volume(driver.client, work, "bench-node", "ext4", size=size)
            print(f"node: first NodeStageVolume (luksFormat + mkfs): {_ms(vol.stage):.0f} ms")
            vol.unstage()
            figures: dict[str, list[float]] = {}
            commands: dict[str, list[float]] = {}
            for _ in range(rounds):  # interleaved, so drift on the machine hits all three
                for label, subject in (("plain", plain), ("luks", luks), ("driver", vol)):
                    mark = len(driver.log_lines())
                    figures.setdefault(f"{label} stage", []).append(_ms(subject.stage))
                    if label == "driver":
                        for name, ms in _commands(driver.log_lines()[mark:]):
                            commands.setdefault(name, []).append(ms)
                    figures.setdefault(f"{label} publish", []).append(_ms(subject.publish))
                    if isinstance(subject, Volume):
                        figures.setdefault("driver unpublish", []).append(
                            _ms(subject.unpublish))
                        figures.setdefault("driver unstage", []).append(_ms(subject.unstage))
                    else:
                        subject.unpublish_unstage()
            vol.delete()
    print(f"node: {size_mib} MiB ext4, {rounds} rounds, p50 / p95:")
    for name, values in figures.items():
        p50, p95 = _p(values)
        print(f"node: {name:<17} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
    med = {k: statistics.median(v) for k, v in figures.items()}
    in_commands = 0.0
    for name, values in sorted(commands.items(), key=lambda kv: -sum(kv[1])):
        per_stage = sum(values) / rounds
        in_commands += per_stage
        print(f"node: driver stage runs {name:<18} {len(values) / rounds:4.1f}x per stage, "
              f"{per_stage:7.1f} ms per stage")
    print(f"node: driver stage outside commands (gRPC, records, key, checks): "
          f"{statistics.mean(figures['driver stage']) - in_commands:7.1f} ms per stage")
    for step in ("stage", "publish"):
        print(f"node: {step}: driver / plain = {med[f'driver {step}'] / med[f'plain {step}']:.2f}"
              f" (goal for stage: <= 1.3); luks - plain = "
              f"{med[f'luks {step}'] - med[f'plain {step}']:.0f} ms, driver - luks = "
              f"{med[f'driver {step}'] - med[f'luks {step}']:.0f} ms")


def _commands(lines: list[str]) -> list[tuple[str, float]]:
    """Each external command the driver ran, with its milliseconds, from its debug log."""
    return [(str(e["command"]), float(e["duration_ms"]))
            for e in (json.loads(line) for line in lines if '"msg": "command"' in line)]


class PeakMemory:
    """The peak summed VmRSS of process `pid` (with `own`) and every process below it, and
    the largest drop of the machine's MemAvailable (which also sees the kernel's share:
    dm-crypt, loop), while its `with` block runs."""

    def __init__(self, pid: int, *, own: bool) -> None:
        self.available_kib = _available_kib()
        self._rss = PeakSampler(lambda: _tree_rss_kib(pid, own))
        self._drop = PeakSampler(lambda: self.available_kib - _available_kib())

    def __enter__(self) -> PeakMemory:
        self._rss.__enter__()
        self._drop.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._rss.__exit__()
        self._drop.__exit__()

    def describe(self, whose: str) -> str:
        return (f"peak RSS of {whose} {self._rss.peak / 1024:.0f} MiB, MemAvailable down by "
                f"{self._drop.peak / 1024:.0f} MiB at most")


def _available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def _tree_rss_kib(root: int, own: bool) -> int:
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("PPid:"):
                        parents[int(entry)] = int(line.split()[1])
                    elif line.startswith("VmRSS:"):
                        rss[int(entry)] = int(line.split()[1])
        except OSError:
            continue  # ended meanwhile
    total = rss.get(root, 0) if own else 0
    for pid in rss:
        if pid == root:
            continue
        walk = pid
        while walk not in (0, 1) and walk != root:
            walk = parents.get(walk, 0)
        if walk == root:
            total += rss[pid]
    return total


def restage(count: int, size_mib: int) -> None:
    size = size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="cryptvol-bench-") as tmp:
        work = Path(tmp)
        with ThreadPoolExecutor(4) as pool:  # setup, not measured
            plains = list(pool.map(lambda i: Plain(work, f"p{i}", size, luks=False),
                                   range(count)))
        with running_driver(work) as driver:
            assert driver.client is not None
            client = driver.client
            with ThreadPoolExecutor(4) as pool:
                vols = list(pool.map(
                    lambda i: create_volume(client, work, f"r{i}", "ext4", size=size),
                    range(count)))
                list(pool.map(lambda v: v.stage(), vols))  # formats each once
                list(pool.map(lambda v: v.unstage(), vols))
        # A node restart: a new driver process finds the volumes formatted and unstaged.
        with running_driver(work) as driver:
            assert driver.client is not None and driver.proc is not None
            for v in vols:
                v.csi = driver.client
            with PeakMemory(driver.proc.pid, own=True) as peak, \
                    ThreadPoolExecutor(count) as pool:
                wall = _ms(lambda: list(pool.map(lambda v: v.stage(), vols)))
            print(f"restage: {count} managed volumes staged at once after a driver restart: "
                  f"{wall / 1000:.2f} s; {peak.describe('the driver and its children')}")
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda v: v.unstage(), vols))
                list(pool.map(lambda v: v.delete(), vols))
        with PeakMemory(os.getpid(), own=False) as peak, ThreadPoolExecutor(count) as pool:
            wall = _ms(lambda: list(pool.map(lambda p: p.stage(), plains)))
        print(f"restage: {count} plain volumes (losetup, mount) at once: {wall / 1000:.2f} s; "
              f"{peak.describe('their commands')}")
        for p in plains:
            p.unpublish_unstage()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["stage", "restage"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=64)
    parser.add_argument("--size-mib", type=int, default=0,
                        help="volume size (default: 256 for stage, 16 for restage)")
    args = parser.parse_args()
    if args.what == "stage":
        stage(args.rounds, args.size_mib or 256)
    else:
        restage(args.volumes, args.size_mib or 16)


if __name__ == "__main__":
    main()
