"""A throwaway VM with a real kernel, for node tests and the demo on hosts without dm-crypt.

ensure_parts()      fetch and build the kernel and initramfs once, cached
run_in_vm(argv,...) boot, run one command as root in the host's root, return its code
dm_crypt_available() whether this host can do it all without a VM
doctor()            which parts are present and cached
"""

from cryptvol.vm.boot import IN_VM_ENV, guest_env, run_in_vm
from cryptvol.vm.doctor import Check, doctor
from cryptvol.vm.errors import VmError, VmUnavailable
from cryptvol.vm.host import dm_crypt_available
from cryptvol.vm.parts import Parts, ensure_parts, resolve_cache_dir

__all__ = [
    "IN_VM_ENV",
    "Check",
    "Parts",
    "VmError",
    "VmUnavailable",
    "dm_crypt_available",
    "doctor",
    "ensure_parts",
    "guest_env",
    "resolve_cache_dir",
    "run_in_vm",
]
