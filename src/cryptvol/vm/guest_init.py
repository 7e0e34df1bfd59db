"""The guest's /init: a busybox shell script that runs one command in the host's root.

The host tells the guest what to run only through files in the writable work share (see
`cryptvol.vm.control`), never on the kernel command line, which is size-limited and visible
in /proc/cmdline. The script's text is part of the initramfs cache key, so editing it here
rebuilds the initramfs on the next boot.
"""

from __future__ import annotations

# The mount tags QEMU gives the two 9p shares.
HOSTROOT_TAG = "hostroot"
WORK_TAG = "work"

# Where init finds the control files, relative to the work share's root.
CONTROL_DIR = ".cryptvol-vm"

# LVM without udev (the guest has none): never wait for udev, list devices by scanning,
# and keep no metadata backups on the read-only host root.
LVM_CONF = """\
activation {
    udev_sync = 0
    udev_rules = 0
    verify_udev_operations = 1
}
devices {
    obtain_device_list_from_udev = 0
}
backup {
    backup = 0
    archive = 0
}
"""

INIT_SCRIPT = (
    r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/
say() { echo "cryptvol-vm: $*"; }
halt_now() { sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
die() { say "FATAL: $*"; halt_now; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so init starts with no stdio until now.
exec </dev/console >/dev/console 2>&1
say "kernel up after $(cut -d' ' -f1 /proc/uptime)s"

while read -r mod; do
    insmod "/lib/modules/$mod" 2>/dev/null || say "insmod ${mod##*/} failed (ignored)"
done < /etc/cryptvol/modules

opts=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /newroot /hostroot /work
mount -t 9p -o "$opts,cache=loose,ro" @HOSTROOT@ /newroot || die "cannot mount the host root"
# A plain bind is a second view of the host root that the tmpfs mounts below do not cover.
mount --bind /newroot /hostroot || die "cannot bind the host root"
mount -t 9p -o "$opts" @WORK@ /work || die "cannot mount the work share"
ctl=/work/@CONTROL@
[ -r "$ctl/work_path" ] || die "no control files in the work share"
work_path=$(cat "$ctl/work_path")

# The host root is read-only: give the guest its own scratch space and LVM config.
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || die "tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || die "tmpfs /run"
mkdir -p /newroot/run/lock /newroot/run/cryptsetup /newroot/run/lvm
if mount -t tmpfs -o mode=755 tmpfs /newroot/etc/lvm; then
    cat > /newroot/etc/lvm/lvm.conf <<'LVMCONF'
@LVMCONF@LVMCONF
else
    say "no /etc/lvm on the host (lvm2 not installed?): LVM will not work"
fi
mount --bind /proc /newroot/proc
mount --bind /sys /newroot/sys
mount --bind /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm

# Host folders the tmpfs mounts just hid (a project checked out under /tmp), read-only.
if [ -r "$ctl/keep_paths" ]; then
    while read -r p; do
        [ -n "$p" ] || continue
        mkdir -p "/newroot$p" && mount --bind "/hostroot$p" "/newroot$p" || say "cannot keep $p"
    done < "$ctl/keep_paths"
fi
# Last, so a work folder under /tmp lands on top of the guest's tmpfs.
mkdir -p "/newroot$work_path" 2>/dev/null
mount --bind /work "/newroot$work_path" || die "cannot mount the work share at $work_path"

say "running the command after $(cut -d' ' -f1 /proc/uptime)s"
chroot /newroot /bin/sh "$work_path/@CONTROL@/command.sh" \
    </dev/null >>"$ctl/stdout" 2>>"$ctl/stderr"
rc=$?
echo "$rc" > "$ctl/exit_code.part" && mv "$ctl/exit_code.part" "$ctl/exit_code"
say "command exited with $rc after $(cut -d' ' -f1 /proc/uptime)s"
halt_now
""".replace("@HOSTROOT@", HOSTROOT_TAG)
    .replace("@WORK@", WORK_TAG)
    .replace("@CONTROL@", CONTROL_DIR)
    .replace("@LVMCONF@", LVM_CONF)
)
