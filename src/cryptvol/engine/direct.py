"""Which volumes are Kata direct-assigned, and which of three things made them so.

1. `storageclass`: the StorageClass parameter `kataDirectVolume: "true"`;
2. `pvc-annotation`: the claim's annotation `cryptvol.io/kata-direct: "true"`, read from the
   Kubernetes API at CreateVolume (the external-provisioner's `--extra-create-metadata`
   names the claim);
3. `runtime-class`: the pod that publishes the volume runs under a RuntimeClass whose
   handler matches `--kata-runtime-handlers` (the CSIDriver's `podInfoOnMount: true` names
   the pod at NodePublishVolume).
The first two are decided at CreateVolume and recorded with the volume; the third at each
NodePublishVolume. When the API is configured but cannot be read, the answer is Unavailable
(the orchestrator retries), never a silent host mount. Without any API configured (no
`--kubeconfig`, not in a cluster) only the StorageClass trigger exists; the driver says so
when it starts.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptvol.engine.types import AccessMode, AccessType, Capability
from cryptvol.errors import CryptvolError, FailedPrecondition, InvalidArgument
from cryptvol.kube.api import KubeApi
from cryptvol.mounts.kata_defaults import RUNTIME_HANDLERS

log = logging.getLogger(__name__)

Trigger = Literal["storageclass", "pvc-annotation", "runtime-class"]
STORAGECLASS: Trigger = "storageclass"
PVC_ANNOTATION: Trigger = "pvc-annotation"
RUNTIME_CLASS: Trigger = "runtime-class"

ANNOTATION = "cryptvol.io/kata-direct"
PVC_NAME_KEY = "csi.storage.k8s.io/pvc/name"
PVC_NAMESPACE_KEY = "csi.storage.k8s.io/pvc/namespace"
POD_NAME_KEY = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE_KEY = "csi.storage.k8s.io/pod.namespace"
POD_UID_KEY = "csi.storage.k8s.io/pod.uid"
# One guest VM holds a direct volume: one node, one writer (ReadWriteOnce: single-node
# writer; ReadWriteOncePod: single-node single-writer), or one reader.
DIRECT_ACCESS_MODES = frozenset({
    AccessMode.SINGLE_NODE_WRITER,
    AccessMode.SINGLE_NODE_SINGLE_WRITER,
    AccessMode.SINGLE_NODE_READER_ONLY,
})


@dataclass(frozen=True)
class PodVerdict:
    """What the publishing pod says: direct or not, and its fsGroupChangePolicy."""

    trigger: Trigger | None = None
    handler: str = ""
    fs_group_change_policy: str = ""


NOT_READ = PodVerdict()


class DirectTriggers:
    def __init__(self, api: KubeApi | None,
                 runtime_handlers: Sequence[str] = RUNTIME_HANDLERS) -> None:
        self.api = api
        self.runtime_handlers = tuple(h for h in runtime_handlers if h)

    def at_create(self, from_class: bool, parameters: Mapping[str, str]) -> Trigger | None:
        """Trigger 1 or 2 for a new volume; reads the claim only when the class did not
        already decide and the provisioner named the claim."""
        if from_class:
            return STORAGECLASS
        name = parameters.get(PVC_NAME_KEY, "")
        namespace = parameters.get(PVC_NAMESPACE_KEY, "")
        if self.api is None or not name or not namespace:
            return None
        claim = self.api.claim(namespace, name)
        if claim is None:
            raise FailedPrecondition(
                f"PersistentVolumeClaim {namespace}/{name} named by the provisioner does not "
                "exist; cannot tell whether its volume is a Kata direct volume"
            )
        value = claim.annotations.get(ANNOTATION)
        if value is None or value == "false":
            return None
        if value != "true":
            raise InvalidArgument(
                f"PersistentVolumeClaim {namespace}/{name}: annotation {ANNOTATION} is "
                f"{value!r}; accepted values: true, false"
            )
        return PVC_ANNOTATION

    def at_publish(self, cap: Capability, context: Mapping[str, str]) -> PodVerdict:
        """Trigger 3, from the pod the orchestrator names; NOT_READ when the request names
        no pod, the trigger is off, or the volume is raw block (Kata passes those itself)."""
        name = context.get(POD_NAME_KEY, "")
        namespace = context.get(POD_NAMESPACE_KEY, "")
        if (self.api is None or not self.runtime_handlers or not name or not namespace
                or cap.access_type is AccessType.BLOCK):
            return NOT_READ
        pod = self.api.pod(namespace, name)
        where = f"Pod {namespace}/{name}"
        uid = context.get(POD_UID_KEY, "")
        if pod is None or (uid and pod.uid and pod.uid != uid):
            raise FailedPrecondition(
                f"{where} that publishes the volume is not in the Kubernetes API"
                f"{' (replaced by another pod of that name)' if pod else ''}; cannot tell "
                "whether it runs under Kata"
            )
        policy = pod.fs_group_change_policy
        if not pod.runtime_class_name:
            return PodVerdict(fs_group_change_policy=policy)
        runtime_class = self.api.runtime_class(pod.runtime_class_name)
        if runtime_class is None:
            raise FailedPrecondition(
                f"{where} names RuntimeClass {pod.runtime_class_name!r}, which does not "
                "exist; cannot tell whether it runs under Kata"
            )
        handler = runtime_class.handler
        if any(fnmatch.fnmatchcase(handler, p) for p in self.runtime_handlers):
            return PodVerdict(RUNTIME_CLASS, handler, policy)
        return PodVerdict(None, handler, policy)

    def describe(self) -> str:
        if self.api is None:
            return ("no Kubernetes API configured (no --kubeconfig, not in a cluster): only "
                    "the StorageClass kataDirectVolume trigger is on")
        third = (f"runtime handlers {', '.join(self.runtime_handlers)}"
                 if self.runtime_handlers else "runtime-class trigger off")
        return f"Kubernetes API {self.api.config.source}; {third}"


def recorded(value: str) -> Trigger | None:
    """The trigger a volume record holds: CreateVolume writes the first two only."""
    if value == STORAGECLASS:
        return STORAGECLASS
    if value == PVC_ANNOTATION:
        return PVC_ANNOTATION
    return None


def check_direct_access(caps: Sequence[Capability], trigger: Trigger,
                        error: type[CryptvolError] = InvalidArgument) -> None:
    for cap in caps:
        if cap.access_type is AccessType.MOUNT and cap.access_mode not in DIRECT_ACCESS_MODES:
            accepted = ", ".join(sorted(m.value for m in DIRECT_ACCESS_MODES))
            raise error(
                f"access mode {cap.access_mode.value} cannot serve a Kata direct volume "
                f"(made direct by {trigger}): its guest VM is one pod on one node; use "
                f"ReadWriteOnce or ReadWriteOncePod ({accepted})"
            )
