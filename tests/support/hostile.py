"""Hostile paths for every node RPC: what each is, the code it must get, and a record of
everything it could have changed.

Used by tests/integration/csi/test_bad_input.py (which asserts each case) and by
bench/bench_hostile.py (which counts them per RPC). A `Scene` is the test's own corner of
kubelet's dir, holding what a hostile request would like to damage: a symlink to the
driver's state dir, a file with data, a stranger's tmpfs mount with a file in it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from cryptvol.csi.client import mount_capability
from cryptvol.csi.gen import csi_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXISTS = grpc.StatusCode.ALREADY_EXISTS
OK = grpc.StatusCode.OK
MIB = 1024 * 1024
UNKNOWN_VOLUME = "cv-00000000000000000000000000000000"


@dataclass
class Scene:
    tmp: Path  # inside the driver's --kubelet-dir
    state_dir: Path  # the driver's: what a symlink would expose
    outside: Path  # a folder outside --kubelet-dir holding a file

    @property
    def link(self) -> Path:
        return self.tmp / "link-to-state"

    @property
    def victim(self) -> Path:
        return self.tmp / "victim.txt"

    @property
    def stranger(self) -> Path:
        return self.tmp / "stranger"

    def build(self) -> None:
        self.link.symlink_to(self.state_dir)
        self.victim.write_text("precious")
        (self.tmp / "empty").mkdir()
        (self.outside / "victim.txt").write_text("precious")
        self.stranger.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stranger", str(self.stranger)],
                       check=True)
        (self.stranger / "theirs.txt").write_text("precious")

    def teardown(self) -> None:
        subprocess.run(["umount", str(self.stranger)], check=False)
        shutil.rmtree(self.outside, ignore_errors=True)


def make_scene(tmp: Path, state_dir: Path) -> Scene:
    scene = Scene(tmp, state_dir, Path(tempfile.mkdtemp(prefix="cryptvol-outside-")))
    scene.build()
    return scene


# How each hostile path is made from a scene; None: the request's own valid path.
HOSTILE: dict[str, Callable[[Scene], str]] = {
    "symlink to the state dir": lambda s: str(s.link),
    "path through a symlink": lambda s: f"{s.link}/x",
    "'..' component": lambda s: f"{s.tmp}/empty/../x",
    "relative path": lambda s: "rel/x",
    "outside kubelet dir": lambda s: str(s.outside / "victim.txt"),
    "NUL byte": lambda s: f"{s.tmp}/x\x00y",
    "longer than PATH_MAX": lambda s: f"{s.tmp}/" + "a" * 5000,
    "a regular file": lambda s: str(s.victim),
    "a stranger's mount": lambda s: str(s.stranger),
}
# Kinds refused for their shape alone, by every RPC and field.
_SHAPE = ("symlink to the state dir", "path through a symlink", "'..' component",
          "relative path", "outside kubelet dir", "NUL byte", "longer than PATH_MAX")

# (RPC, path field): the code each kind of hostile path gets for a volume that exists and
# is not staged on this node (the host has no dm-crypt). Codes for a regular file and a
# stranger's mount: staging paths must be directories (InvalidArgument); a path holding
# a mount that is not the volume's is refused with FailedPrecondition, or AlreadyExists
# as a publish target; an unstaged volume cannot be published or grown (FailedPrecondition).
FIELDS: dict[tuple[str, str], dict[str, grpc.StatusCode]] = {
    ("NodeStageVolume", "staging_target_path"): {
        "a regular file": INVALID, "a stranger's mount": PRECONDITION},
    ("NodeUnstageVolume", "staging_target_path"): {
        "a regular file": INVALID, "a stranger's mount": PRECONDITION},
    ("NodePublishVolume", "target_path"): {
        "a regular file": PRECONDITION, "a stranger's mount": EXISTS},
    ("NodePublishVolume", "staging_target_path"): {
        "a regular file": INVALID, "a stranger's mount": PRECONDITION},
    ("NodeUnpublishVolume", "target_path"): {
        "a regular file": PRECONDITION, "a stranger's mount": PRECONDITION},
    ("NodeGetVolumeStats", "volume_path"): {
        "a regular file": OK, "a stranger's mount": PRECONDITION},
    ("NodeExpandVolume", "volume_path"): {
        "a regular file": PRECONDITION, "a stranger's mount": PRECONDITION},
}


@dataclass(frozen=True)
class Case:
    rpc: str
    field: str
    kind: str
    code: grpc.StatusCode
    volume: str = ""  # "": the existing volume; UNKNOWN_VOLUME for an unknown id

    @property
    def id(self) -> str:
        who = " (unknown volume)" if self.volume else ""
        return f"{self.rpc} {self.field}: {self.kind}{who}"


def cases() -> list[Case]:
    found = []
    for (rpc, field), special in FIELDS.items():
        for kind in HOSTILE:
            found.append(Case(rpc, field, kind, special.get(kind, INVALID)))
        # An unknown volume id with a path that is fine but holds someone's data: NotFound,
        # and nothing touched (seen: the file was removed).
        for kind in ("a regular file", "a stranger's mount"):
            if field != "staging_target_path" or kind != "a regular file":
                found.append(Case(rpc, field, kind, NOT_FOUND, UNKNOWN_VOLUME))
    assert all(k in HOSTILE for k in _SHAPE)
    return found


def request(case: Case, scene: Scene, volume_id: str):
    """The request of `case`: valid in every field but the hostile one."""
    volume_id = case.volume or volume_id
    paths = {
        "staging_target_path": str(scene.tmp / "staging"),
        "target_path": str(scene.tmp / "target"),
        "volume_path": str(scene.tmp / "empty"),
    }
    paths[case.field] = HOSTILE[case.kind](scene)
    cap = mount_capability("ext4")
    if case.rpc == "NodeStageVolume":
        return pb.NodeStageVolumeRequest(volume_id=volume_id, volume_capability=cap,
                                         staging_target_path=paths["staging_target_path"])
    if case.rpc == "NodeUnstageVolume":
        return pb.NodeUnstageVolumeRequest(volume_id=volume_id,
                                           staging_target_path=paths["staging_target_path"])
    if case.rpc == "NodePublishVolume":
        return pb.NodePublishVolumeRequest(volume_id=volume_id, volume_capability=cap,
                                           staging_target_path=paths["staging_target_path"],
                                           target_path=paths["target_path"])
    if case.rpc == "NodeUnpublishVolume":
        return pb.NodeUnpublishVolumeRequest(volume_id=volume_id,
                                             target_path=paths["target_path"])
    if case.rpc == "NodeGetVolumeStats":
        return pb.NodeGetVolumeStatsRequest(volume_id=volume_id,
                                            volume_path=paths["volume_path"])
    return pb.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=paths["volume_path"],
                                      capacity_range=pb.CapacityRange(required_bytes=64 * MIB))


def call(stub, case: Case, req) -> tuple[grpc.StatusCode, str]:
    try:
        getattr(stub, case.rpc)(req)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


def snapshot(*roots: Path) -> dict[str, object]:
    """Everything a hostile request could change below `roots` (files with their content,
    directories, symlinks with their target) and every mount and loop device of the host."""
    seen: dict[str, object] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                if name.startswith("cryptvol.db"):
                    continue  # readers touch -shm; the records are compared apart
                path = os.path.join(folder, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    seen[path] = ("link", os.readlink(path))
                elif os.path.isfile(path):
                    with open(path, "rb") as f:
                        seen[path] = ("file", hashlib.sha256(f.read()).hexdigest())
                else:
                    seen[path] = ("other", st.st_mode)
    def ours(path: str) -> bool:  # other work on this host mounts and attaches too
        return any(path == str(r) or path.startswith(f"{r}/") for r in roots)

    with open("/proc/self/mountinfo") as f:
        seen["mounts"] = sorted(m for line in f
                                if ours(m := line.split(" - ")[0].split()[4]))
    backing = []
    for entry in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            backing.append(entry.read_text().strip())
        except OSError:
            continue  # detached meanwhile
    seen["loops"] = sorted(b for b in backing if ours(b))
    return seen
