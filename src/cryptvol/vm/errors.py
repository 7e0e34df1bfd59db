"""What can go wrong with the test VM, in the project's one error hierarchy."""

from __future__ import annotations

from cryptvol.errors import FailedPrecondition, Internal


class VmError(Internal):
    """The VM did not run the command to completion: timeout, panic, or no report.

    `serial_tail` is the end of the guest's serial console, which says what the kernel and
    the guest's init saw last; it is part of the message.
    """

    def __init__(self, message: str, serial_tail: str = "") -> None:
        self.serial_tail = serial_tail
        if serial_tail:
            message = f"{message}\n--- last lines of the VM's serial console ---\n{serial_tail}"
        super().__init__(message)


class VmUnavailable(FailedPrecondition):
    """A part the VM needs is missing here (QEMU, busybox, the kernel and no way to fetch it)."""
