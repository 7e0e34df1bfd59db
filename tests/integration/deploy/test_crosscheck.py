"""The rendered manifests agree with the code they run and with the sidecars' documented needs.

- every `cryptvol` flag a manifest passes exists in that command's `--help`;
- every host path the driver writes to is a hostPath mount (kubelet's with Bidirectional
  propagation), and key files come from read-only Secrets of mode 0400;
- the CSIDriver object and the sidecars match what the real driver advertises over gRPC;
- the RBAC rules grant each sidecar what its own RBAC file asks for;
- images are pinned (the sidecars to the versions whose flags were checked);
- every StorageClass's parameters pass the driver's validation and name a configured pool.

Slices being built now (pools, Kata, KMS, metrics, node-side expansion, snapshots) add flags,
parameters and capabilities the manifests already use. They are listed in PENDING with the
issue that brings them, and each check fails both ways: a gap not listed, and a listed gap
that is gone (then delete its line), so the list drains as those branches merge.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import PurePosixPath

import pytest

from cryptvol import DRIVER_NAME, __version__
from cryptvol.csi.gen import csi_pb2 as pb
from cryptvol.engine.parameters import parse_parameters
from cryptvol.errors import InvalidArgument
from support.manifests import KUSTOMIZATIONS, Object

PENDING: dict[str, str] = {}

# What each sidecar needs from the driver, from its source at the pinned version:
# external-provisioner README "Deployment on each node" (topology, GetCapacity) and
# cmd/csi-provisioner (controller service, CREATE_DELETE_VOLUME); csi-snapshotter
# cmd/csi-snapshotter/main.go exits without CREATE_DELETE_SNAPSHOT; external-resizer
# pkg/resizer/csi_resizer.go needs the controller service and, without controller
# EXPAND_VOLUME, node EXPAND_VOLUME (its "trivial" resizer).
SIDECAR_IMAGES = {
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0",
    "csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0",
    "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:v2.2.1",
    "node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0",
    "liveness-probe": "registry.k8s.io/sig-storage/livenessprobe:v2.19.0",
}
CRYPTVOL_IMAGE = f"localhost/cryptvol:{__version__}"

# RBAC each sidecar documents, in the mode these manifests run it (apiGroup, resource,
# verbs, "cluster" or "namespace"). Sources, at the pinned tags:
# external-provisioner deploy/kubernetes/rbac.yaml (secrets: its comment for drivers with
# provisioner secrets; csistoragecapacities and pods get: --enable-capacity with an owner;
# no leases: --node-deployment does not elect a leader; no volumeattachments: no
# PUBLISH_UNPUBLISH_VOLUME); csi-snapshotter deploy/kubernetes/csi-snapshotter/
# rbac-csi-snapshotter.yaml (no leases: --node-deployment refuses leader election);
# external-resizer deploy/kubernetes/rbac.yaml (leases: --leader-election).
# node-driver-registrar and livenessprobe do not talk to the API server.
SIDECAR_RBAC: dict[str, list[tuple[str, str, set[str], str]]] = {
    "csi-provisioner": [
        ("", "persistentvolumes", {"get", "list", "watch", "create", "patch", "delete"}, "cluster"),
        ("", "persistentvolumeclaims", {"get", "list", "watch", "update"}, "cluster"),
        ("storage.k8s.io", "storageclasses", {"get", "list", "watch"}, "cluster"),
        ("", "events", {"list", "watch", "create", "update", "patch"}, "cluster"),
        ("snapshot.storage.k8s.io", "volumesnapshots", {"get", "list", "watch", "update"},
         "cluster"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", {"get", "list"}, "cluster"),
        ("storage.k8s.io", "csinodes", {"get", "list", "watch"}, "cluster"),
        ("", "nodes", {"get", "list", "watch"}, "cluster"),
        ("", "secrets", {"get", "list"}, "cluster"),
        ("storage.k8s.io", "csistoragecapacities",
         {"get", "list", "watch", "create", "update", "patch", "delete"}, "namespace"),
        ("", "pods", {"get"}, "namespace"),
    ],
    "csi-snapshotter": [
        ("", "events", {"list", "watch", "create", "update", "patch"}, "cluster"),
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", {"get", "list", "watch"}, "cluster"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents",
         {"get", "list", "watch", "update", "patch"}, "cluster"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", {"update", "patch"},
         "cluster"),
    ],
    "csi-resizer": [
        ("", "persistentvolumes", {"get", "list", "watch", "patch"}, "cluster"),
        ("", "persistentvolumeclaims", {"get", "list", "watch"}, "cluster"),
        ("", "pods", {"get", "list", "watch"}, "cluster"),
        ("", "persistentvolumeclaims/status", {"patch"}, "cluster"),
        ("", "events", {"list", "watch", "create", "update", "patch"}, "cluster"),
        ("storage.k8s.io", "volumeattributesclasses", {"get", "list", "watch"}, "cluster"),
        ("coordination.k8s.io", "leases", {"get", "watch", "list", "delete", "update", "create"},
         "namespace"),
    ],
}

# Host paths the driver writes to that no flag names: device nodes (losetup, dm-crypt
# mappings under cryptvol.luks.cryptsetup.MAPPER_DIR), cryptsetup's lock directory (shared
# with the host's cryptsetup), Kata's direct-volume directory (DESIGN.md, Kata), and the
# modules modprobe loads (read).
FIXED_HOST_PATHS = ["/dev", "/run/cryptsetup", "/run/kata-containers/shared/direct-volumes",
                    "/lib/modules"]
KUBELET_DIR = "/var/lib/kubelet"


def gaps_match_pending(prefix: str, gaps: set[str]) -> None:
    """The gaps found are exactly the PENDING entries that start with `prefix`."""
    listed = {k for k in PENDING if k.startswith(prefix)}
    unexpected, done = gaps - listed, listed - gaps
    assert not unexpected, f"not in the code, and not listed as pending: {sorted(unexpected)}"
    assert not done, f"now in the code: delete from PENDING: {sorted(done)}"


def objects(rendered, kind: str) -> Iterator[tuple[str, Object]]:
    for name in KUSTOMIZATIONS:
        for obj in rendered[name]:
            if obj["kind"] == kind:
                yield name, obj


def pod_specs(rendered) -> Iterator[tuple[str, Object]]:
    for name, ds in objects(rendered, "DaemonSet"):
        yield name, ds["spec"]["template"]["spec"]
    for name, pod in objects(rendered, "Pod"):
        yield name, pod["spec"]


def cryptvol_containers(rendered) -> Iterator[tuple[str, Object, Object]]:
    for name, spec in pod_specs(rendered):
        for container in spec["containers"]:
            if container["image"].startswith("localhost/cryptvol:"):
                yield name, spec, container


def command_and_flags(container: Object) -> tuple[list[str], dict[str, list[str]]]:
    """(["kms", "serve"], {"--listen": [...]}) from the container's args."""
    args = container.get("command", [])[1:] + container["args"]
    words = [a for a in args if not a.startswith("-")][:2 if args[0] == "kms" else 1]
    flags: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            flag, _, value = arg.partition("=")
            flags.setdefault(flag, []).append(value)
    return words, flags


def help_flags(words: list[str]) -> set[str]:
    """The flags `cryptvol WORDS --help` lists; none if there is no such command."""
    done = subprocess.run([sys.executable, "-m", "cryptvol", *words, "--help"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return set()
    return set(re.findall(r"(?:^\s+|/ )(--[a-z0-9-]+)", done.stdout, re.MULTILINE))


def test_the_base_runs_the_driver_first_with_every_sidecar(rendered):
    [(_, ds)] = [(n, o) for n, o in objects(rendered, "DaemonSet") if n == "base"]
    names = [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]]
    # Overlays and components patch containers/0: it must stay the driver.
    assert names == ["cryptvol", *SIDECAR_IMAGES]


def test_every_cryptvol_flag_in_the_manifests_exists_in_its_commands_help(rendered):
    gaps = set()
    for _, _, container in cryptvol_containers(rendered):
        words, flags = command_and_flags(container)
        known = help_flags(words)
        gaps |= {f"flag: {' '.join(words)} {flag}" for flag in flags if flag not in known}
    gaps_match_pending("flag: ", gaps)


def mounts_by_path(spec: Object, container: Object) -> dict[str, tuple[Object, Object]]:
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container.get("volumeMounts", [])}


def covering_mount(path: str, mounts: dict[str, tuple[Object, Object]]
                   ) -> tuple[str, Object, Object]:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if PurePosixPath(path).is_relative_to(mount_path):
            return (mount_path, *mounts[mount_path])
    raise AssertionError(f"{path} is on no volume")


def written_host_paths(flags: dict[str, list[str]]) -> list[str]:
    paths = list(FIXED_HOST_PATHS)
    paths += flags.get("--state-dir", [])
    paths += flags.get("--kubelet-dir", [KUBELET_DIR])
    for pool in flags.get("--pool", []):
        kind, _, where = pool.partition("=")[2].partition(":")
        if kind == "loop":
            paths.append(where)
    return paths


def test_every_host_path_the_driver_writes_to_is_mounted_from_the_host(rendered):
    for name, spec, container in cryptvol_containers(rendered):
        words, flags = command_and_flags(container)
        if words != ["serve"]:
            continue
        mounts = mounts_by_path(spec, container)
        for path in written_host_paths(flags):
            mount_path, mount, volume = covering_mount(path, mounts)
            assert "hostPath" in volume, (name, path)
            assert volume["hostPath"]["path"] == mount_path, (name, path)
            assert not mount.get("readOnly") or path == "/lib/modules", (name, path)
        kubelet = flags.get("--kubelet-dir", [KUBELET_DIR])[0]
        assert mounts[kubelet][0].get("mountPropagation") == "Bidirectional", name
        assert container["securityContext"]["privileged"] is True
        # The CSI socket is where the sidecars and kubelet's registration expect it.
        socket = flags["--endpoint"][0].removeprefix("unix://")
        socket_dir, _, socket_volume = covering_mount(socket, mounts)
        assert socket_volume["hostPath"]["path"] == f"{KUBELET_DIR}/plugins/{DRIVER_NAME}"
        for sidecar in spec["containers"][1:]:
            assert f"--csi-address={socket}" in sidecar["args"], sidecar["name"]
        registrar = next(c for c in spec["containers"] if c["name"] == "node-driver-registrar")
        host_socket = socket_volume["hostPath"]["path"] + socket.removeprefix(socket_dir)
        assert f"--kubelet-registration-path={host_socket}" in registrar["args"]


def test_key_files_come_from_read_only_secrets_of_mode_0400(rendered):
    for name, spec, container in cryptvol_containers(rendered):
        words, flags = command_and_flags(container)
        mounts = mounts_by_path(spec, container)
        for flag in ("--root-key", "--etcd-ca-file", "--etcd-cert-file", "--etcd-key-file"):
            for path in flags.get(flag, []):
                _, mount, volume = covering_mount(path, mounts)
                assert mount.get("readOnly") is True, (name, flag)
                if words == ["serve"]:
                    assert volume["secret"]["defaultMode"] == 0o400, (name, flag)
                else:  # a static pod cannot mount Secrets: the node's own files
                    assert "hostPath" in volume, (name, flag)


@pytest.fixture(scope="module")
def advertised(shared_driver):
    """What the real driver (`cryptvol serve --role all`, as in the DaemonSet) advertises."""
    csi = shared_driver.client
    return {
        "info": csi.identity.GetPluginInfo(pb.GetPluginInfoRequest()),
        "plugin": csi.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest()),
        "controller": {c.rpc.type for c in csi.controller.ControllerGetCapabilities(
            pb.ControllerGetCapabilitiesRequest()).capabilities},
        "node": {c.rpc.type for c in csi.node.NodeGetCapabilities(
            pb.NodeGetCapabilitiesRequest()).capabilities},
        "node_info": csi.node.NodeGetInfo(pb.NodeGetInfoRequest()),
        "node_id": shared_driver.node_id,
    }


Ctl = pb.ControllerServiceCapability.RPC
Nd = pb.NodeServiceCapability.RPC


def plugin_services(advertised) -> set[int]:
    return {c.service.type for c in advertised["plugin"].capabilities if c.HasField("service")}


def test_the_csidriver_object_matches_what_the_driver_advertises(rendered, advertised):
    [(_, driver)] = [(n, o) for n, o in objects(rendered, "CSIDriver") if n == "base"]
    spec = driver["spec"]
    assert driver["metadata"]["name"] == advertised["info"].name == DRIVER_NAME
    # No ControllerPublishVolume, so nothing to attach.
    assert spec["attachRequired"] is (Ctl.PUBLISH_UNPUBLISH_VOLUME in advertised["controller"])
    # The scheduler trusts CSIStorageCapacity only if the provisioners publish it from
    # GetCapacity.
    assert spec["storageCapacity"] is (Ctl.GET_CAPACITY in advertised["controller"]) is True
    assert spec["volumeLifecycleModes"] == ["Persistent"]
    assert spec["podInfoOnMount"] is True
    assert spec["fsGroupPolicy"] == "File"
    # Node-local volumes: topology, one segment per node, keyed by the node name.
    service = pb.PluginCapability.Service
    assert service.VOLUME_ACCESSIBILITY_CONSTRAINTS in plugin_services(advertised)
    segments = dict(advertised["node_info"].accessible_topology.segments)
    assert segments == {f"{DRIVER_NAME}/node": advertised["node_id"]}


def test_expansion_happens_on_the_node(rendered, advertised):
    """Online expansion, no controller EXPAND_VOLUME: the resizer only marks the claim and
    kubelet's NodeExpandVolume grows the volume where its pool is."""
    expansion = pb.PluginCapability.VolumeExpansion
    types = {c.volume_expansion.type for c in advertised["plugin"].capabilities
             if c.HasField("volume_expansion")}
    assert types == {expansion.ONLINE}
    assert Nd.EXPAND_VOLUME in advertised["node"]
    gaps = set()
    if Ctl.EXPAND_VOLUME in advertised["controller"]:
        gaps.add("capability: controller EXPAND_VOLUME withdrawn")
    gaps_match_pending("capability: controller EXPAND_VOLUME", gaps)
    for _, sc in objects(rendered, "StorageClass"):
        assert sc["allowVolumeExpansion"] is True, sc["metadata"]["name"]


def test_every_sidecar_finds_what_it_needs_in_the_driver(rendered, advertised):
    assert pb.PluginCapability.Service.CONTROLLER_SERVICE in plugin_services(advertised)
    assert {Ctl.CREATE_DELETE_VOLUME, Ctl.GET_CAPACITY} <= advertised["controller"]
    gaps = set()
    if Ctl.CREATE_DELETE_SNAPSHOT not in advertised["controller"]:
        gaps.add("capability: controller CREATE_DELETE_SNAPSHOT")
    gaps_match_pending("capability: controller CREATE_DELETE_SNAPSHOT", gaps)


def test_sidecars_run_in_their_distributed_modes(rendered):
    for name, spec in pod_specs(rendered):
        containers = {c["name"]: c for c in spec["containers"]}
        if "csi-provisioner" not in containers:
            continue
        env = {c: {e["name"] for e in containers[c].get("env", [])} for c in containers}
        provisioner = containers["csi-provisioner"]["args"]
        assert {"--node-deployment=true", "--extra-create-metadata", "--enable-capacity"} \
            <= set(provisioner), name
        assert {"NODE_NAME", "NAMESPACE", "POD_NAME"} <= env["csi-provisioner"]
        assert "--node-deployment" in containers["csi-snapshotter"]["args"]
        assert not any(a.startswith("--leader-election") for a in containers["csi-snapshotter"]
                       ["args"])
        assert "NODE_NAME" in env["csi-snapshotter"]
        # One resizer active in the cluster.
        assert "--leader-election" in containers["csi-resizer"]["args"]


def granted(rendered, name: str, service_account: str, namespace: str
            ) -> dict[tuple[str, str, str], set[str]]:
    """(apiGroup, resource, scope) -> verbs the service account is bound to."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in rendered[name]
             if o["kind"] in ("ClusterRole", "Role")}
    grants: dict[tuple[str, str, str], set[str]] = {}
    for binding in rendered[name]:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if {"kind": "ServiceAccount", "name": service_account, "namespace": namespace} \
                not in binding["subjects"]:
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        scope = "cluster" if binding["kind"] == "ClusterRoleBinding" else "namespace"
        if scope == "namespace":
            assert binding["metadata"]["namespace"] == namespace
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource, scope), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize("kustomization", [k for k in KUSTOMIZATIONS if k != "overlays/kms"])
def test_rbac_grants_each_sidecar_what_its_docs_ask_for(rendered, kustomization):
    [ds] = [o for o in rendered[kustomization] if o["kind"] == "DaemonSet"]
    grants = granted(rendered, kustomization, ds["spec"]["template"]["spec"]["serviceAccountName"],
                     ds["metadata"]["namespace"])
    for sidecar, needs in SIDECAR_RBAC.items():
        for group, resource, verbs, scope in needs:
            have = grants.get((group, resource, scope), set())
            if scope == "namespace":  # a cluster-wide grant covers the namespace too
                have |= grants.get((group, resource, "cluster"), set())
            assert verbs <= have, (sidecar, group, resource, scope, verbs - have)


def test_images_are_pinned(rendered):
    for name, spec in pod_specs(rendered):
        for container in spec["containers"]:
            image = container["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and "/" not in tag and tag not in ("", "latest"), (name, image)
            if container["name"] in SIDECAR_IMAGES:
                assert image == SIDECAR_IMAGES[container["name"]], name
            else:
                # deploy/image/build.sh tags the image with the package's version.
                assert image == CRYPTVOL_IMAGE, name


def test_storageclass_parameters_pass_the_drivers_validation_and_name_a_pool(rendered):
    gaps = set()
    for name, _, container in cryptvol_containers(rendered):
        _, flags = command_and_flags(container)
        pools = {p.partition("=")[0] for p in flags.get("--pool", [])}
        for _, sc in ((n, o) for n, o in objects(rendered, "StorageClass") if n == name):
            assert sc["provisioner"] == DRIVER_NAME
            assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
            params = dict(sc["parameters"])
            if "pool" in params:
                assert params["pool"] in pools, (name, sc["metadata"]["name"], pools)
            while True:
                try:
                    parse_parameters(params)
                    break
                except InvalidArgument as exc:
                    unknown = re.findall(r"'([^']+)'", str(exc).split(";")[0])
                    assert unknown and "unknown parameter" in str(exc), str(exc)
                    gaps |= {f"parameter: {key}" for key in unknown}
                    for key in unknown:
                        params.pop(key)
    gaps_match_pending("parameter: ", gaps)


def test_get_capacity_answers_each_class_as_the_provisioner_asks(rendered, shared_driver):
    """external-provisioner's capacity controller (v6.3.0 pkg/capacity) sends the class's
    parameters verbatim, secret references included, no capabilities, and its node's
    topology segment. (Parameters still PENDING are left out until the driver knows them.)
    A class whose pool this node does not configure has no room here: 0, not an error, so
    the scheduler places its claims on nodes that have the pool."""
    for _, sc in objects(rendered, "StorageClass"):
        params = {k: v for k, v in sc["parameters"].items()
                  if f"parameter: {k}" not in PENDING}
        segment = {f"{DRIVER_NAME}/node": shared_driver.node_id}
        answer = shared_driver.client.controller.GetCapacity(pb.GetCapacityRequest(
            parameters=params, accessible_topology=pb.Topology(segments=segment),
        ))
        here = params.get("pool", "default") == "default"  # the test driver's one pool
        assert (answer.available_capacity > 0) == here, sc["metadata"]["name"]


def test_the_volumesnapshotclass_names_the_driver(rendered):
    classes = [o for _, o in objects(rendered, "VolumeSnapshotClass")]
    assert classes and all(c["driver"] == DRIVER_NAME for c in classes)
