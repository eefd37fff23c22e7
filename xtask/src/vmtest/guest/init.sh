#!/bin/sh
# The guest's /init for `cargo xtask vmtest` (busybox sh, PID 1).
#
# Mounts the kernel's file systems, then reads /vmtest/plan: each
# `scenario NAME TIMEOUT MODULES` line runs that scenario (one
# PARASTOR-RESULT line each, see /vmtest/lib.sh); a `shell` line instead
# opens an interactive shell on the console. Then the kernel log is printed
# with every line tagged PARASTOR-DMESG (the host scans it for faults) and
# the machine powers off. PID 1 must never exit: that is a kernel panic.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
LD_LIBRARY_PATH="$(cat /vmtest/library-path)"
export LD_LIBRARY_PATH
# libdevmapper (cryptsetup) waits for udev unless told there is none.
export DM_DISABLE_UDEV=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
# LIO keeps persistent-reservation state here; without it PR OUT
# REGISTER answers NOT READY.
mkdir -p /etc/target/pr /run/cryptsetup /tmp/vmtest
# Keep the kernel's messages (target errors, for one) off the console;
# they are all printed, tagged, at the end.
dmesg -n 1

. /vmtest/lib.sh

echo "PARASTOR-BOOTED $(uptime_seconds)"

shell=no
exec 3< /vmtest/plan
while read -r kind name timeout modules <&3; do
    case $kind in
    scenario)
        run_scenario "$name" "$timeout" "$modules" </dev/null
        ;;
    shell)
        shell=yes
        while read -r kind name timeout modules <&3; do
            [ "$kind" = scenario ] && load_modules "$modules"
        done
        echo "vmtest shell: scenarios are in /vmtest/scenarios;" \
            "run one with: vmtest_run NAME (see /vmtest/plan); exit to power off"
        ENV=/vmtest/lib.sh setsid cttyhack sh -i
        ;;
    esac
done
exec 3<&-

# The host scans the kernel log for faults (not wanted after a shell).
[ $shell = yes ] || dmesg | sed 's/^/PARASTOR-DMESG /'
echo "PARASTOR-DONE $(uptime_seconds)"
sync
poweroff -f
# poweroff -f does not return; if it did, PID 1 must not exit.
while :; do sleep 60; done
