#!/bin/bash
# test-libvirt-scripts.sh: scripts/libvirt-down waits until libvirtd has
# exited, and scripts/libvirt-up right after it starts a fresh libvirtd
# instead of waiting on the dying one (regression: CI's clones test found the
# libvirtd that lazy-boot had just stopped and gave up after 30 s).  TAP.
set -u
. "$(dirname "$0")/lib.sh"
src=$(cd "$(dirname "$0")/../.." && pwd)
libvirt_state=""
cleanup() { [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"; }
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
answers() { virsh -c qemu:///system version >/dev/null 2>&1; }
if answers; then
    skip_all "a libvirtd this test did not start is running: not stopping it"
fi

for round in 1 2 3; do
    libvirt_state=$("$src/scripts/libvirt-up")
    check "round $round: libvirt-up starts libvirtd" test "$libvirt_state" = started
    check "round $round: libvirtd answers" answers
    pid=$(cat /run/libvirtd.pid 2>/dev/null)
    "$src/scripts/libvirt-down"
    libvirt_state=""
    check "round $round: libvirt-down returns after libvirtd exited" \
        test -n "$pid" -a ! -d "/proc/$pid"
done
finish
