#!/bin/bash
# test-clone-faults.sh SPORECTL: what an interrupted clone-create leaves:
# the libguestfs appliance killed mid-customization, and libvirtd stopped
# mid-create, each leave no domain and no volume and a clear error, and the
# same command run again succeeds.  Domains that are not spore's are never
# touched.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
service=spore-test-faults
pool=spore-test-faults
work=""
libvirt_state=""
bg=""

cleanup() {
    [ -n "$bg" ] && kill "$bg" 2>/dev/null
    "$src/scripts/libvirt-up" >/dev/null 2>&1 || true # if the test stopped it
    remove_leftovers "$service" "$pool"
    [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"
    [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
command -v guestfish >/dev/null || skip_all "libguestfs-tools is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"

guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
    { echo "Bail out! cannot build the test guest"; exit 1; }
work=$(mktemp -d /var/tmp/spore-faults.XXXXXX)
chmod 0755 "$work"
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
remove_leftovers "$service" "$pool"
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
export SPORE_VIRT_TYPE=$virt_type LIBGUESTFS_BACKEND=direct
export SPORE_INSPECT_CACHE=$work/inspect
[ "$virt_type" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg

cat >"$work/service.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="$service">
  <image name="test-guest"><origin url="file://$guest/disk.raw"/></image>
  <vm hypervisor="$virt_type">
    <vcpus>1</vcpus>
    <memory unit="MiB">128</memory>
  </vm>
  <customize><hostname>fault-{index}</hostname></customize>
  <scaling min="1" max="2"/>
</service>
EOF
lv() { virsh -q -c qemu:///system "$@"; }
create() { # create INDEX: clone-create in the background, stderr to err-INDEX
    "$sporectl" clone-create --no-start --image "$guest/disk.raw" \
        --pool "$pool" --pool-dir "$work/pool" --console-dir "$work/console" \
        "$work/service.xml" "$1" >"$work/out-$1" 2>"$work/err-$1" &
    bg=$!
}
finish_bg() { wait "$bg"; local s=$?; bg=""; return $s; }
appliance() { pgrep -f "qemu-system.*$work/pool/" | head -n 1; }
# appliance_up: the appliance has run for 2 s (a short-lived QEMU probe of
# libguestfs' matches too); sets victim
appliance_up() {
    victim=$(appliance)
    [ -n "$victim" ] && sleep 2 && kill -0 "$victim" 2>/dev/null
}
no_clone() { # no_clone INDEX: neither the domain nor its overlay exist
    ! quiet lv dominfo "$service-$1" &&
        quiet lv pool-refresh "$pool" &&
        ! lv vol-list "$pool" | grep -q "$service-$1" &&
        [ ! -e "$work/pool/$service-$1.qcow2" ]
}

# --- a manifest the guest cannot satisfy: an ssh key for a user it lacks
sed 's|</customize>|<ssh-key user="nosuch">ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x</ssh-key></customize>|' \
    "$work/service.xml" >"$work/nouser.xml"
"$sporectl" clone-create --no-start --image "$guest/disk.raw" \
    --pool "$pool" --pool-dir "$work/pool" --console-dir "$work/console" \
    "$work/nouser.xml" 0 >/dev/null 2>"$work/err-nouser"
check "clone-create fails for an ssh key of a user the guest does not have" \
    test $? = 1
echo "# $(tail -n 1 "$work/err-nouser")"
check "with one error naming the clone once and the user (no \"run it again\")" \
    test "$(tail -n 1 "$work/err-nouser")" = "sporectl clone-create: customizing $service-0 (nothing was defined): clone $service-0: user 'nosuch' (for an ssh key) is not in the guest's /etc/passwd"
check "leaving no domain and no volume" no_clone 0

# --- an image without an operating system: a blank disk
truncate -s 64M "$work/blank.raw"
"$sporectl" clone-create --no-start --image "$work/blank.raw" \
    --pool "$pool" --pool-dir "$work/pool" --console-dir "$work/console" \
    "$work/service.xml" 0 >/dev/null 2>"$work/err-blank"
check "clone-create fails on a blank image" test $? = 1
echo "# $(tail -n 1 "$work/err-blank")"
check "saying it has no recognizable operating system, naming the clone and the image" \
    test "$(tail -n 1 "$work/err-blank")" = "sporectl clone-create: customizing $service-0 (nothing was defined): clone $service-0: no recognizable operating system in '$work/blank.raw'"
check "leaving no domain and no volume" no_clone 0

# --- the appliance is killed while it customizes clone 0
create 0
check "the appliance starts customizing clone 0" wait_until 120 appliance_up
echo "# killing the appliance: $(ps -o pid=,etime=,args= -p "$victim" | cut -c1-100)"
kill -9 "$victim"
finish_bg
check "clone-create fails when its appliance is killed" test $? = 1
echo "# $(tail -n 1 "$work/err-0")"
check "with an error naming the clone" grep -q "$service-0" "$work/err-0"
check "that says a retry can help" \
    grep -q "customizing $service-0 (nothing was defined; run it again): " "$work/err-0"
check "and does not repeat the clone's name" \
    test "$(grep -c "clone $service-0: clone $service-0" "$work/err-0")" = 0
check "leaving no domain and no volume" no_clone 0
create 0
finish_bg
check "running it again creates the clone" test $? = 0
check "which is now defined" quiet lv dominfo "$service-0"
check "with its overlay volume" grep -q "$service-0.qcow2" <(lv vol-list "$pool")

# --- domains that are not spore's are never touched
cat >"$work/other.xml" <<EOF
<domain type="$virt_type">
  <name>$service-1</name>
  <memory unit="MiB">64</memory>
  <os><type arch="x86_64">hvm</type></os>
</domain>
EOF
quiet lv define "$work/other.xml"
uuid=$(lv domuuid "$service-1")
create 1
finish_bg
check "clone-create refuses a name taken by a domain that is not spore's" test $? = 1
check "saying so" grep -q "exists with UUID $uuid.*not a spore clone" "$work/err-1"
"$sporectl" clone-destroy --pool "$pool" "$service-1" >/dev/null 2>"$work/err-destroy"
check "clone-destroy refuses it too" test $? = 1
check "saying so" grep -q "not a spore clone" "$work/err-destroy"
check "the domain is untouched" test "$(lv domuuid "$service-1")" = "$uuid"
check "and no volume was made for it" \
    test ! -e "$work/pool/$service-1.qcow2"
quiet lv undefine "$service-1"

# --- libvirtd dies while clone 1 is being customized
if [ "$libvirt_state" = started ]; then
    create 1
    check "the appliance starts customizing clone 1" wait_until 120 appliance_up
    # the connection is lost: libvirtd dies (a TERM'ed libvirtd would
    # still finish the calls of connected clients while it shuts down)
    lvpid=$(cat /run/libvirtd.pid)
    kill -9 "$lvpid"
    wait_until 20 eval '! kill -0 "$lvpid" 2>/dev/null'
    finish_bg
    check "clone-create fails when libvirtd is gone" test $? = 1
    echo "# $(tail -n 1 "$work/err-1")"
    check "with an error saying libvirt cannot be reached" \
        grep -Eq "lost the connection to libvirt|cannot connect to libvirt" "$work/err-1"
    check "its new overlay is removed" test ! -e "$work/pool/$service-1.qcow2"
    libvirt_state=$("$src/scripts/libvirt-up")
    check "libvirtd is back" test "$libvirt_state" = started
    check "no domain was defined" no_clone 1
    create 1
    finish_bg
    check "running it again creates the clone" test $? = 0
    check "which is now defined with its volume" \
        grep -q "$service-1.qcow2" <(lv vol-list "$pool")
    check "clone 0 survived libvirtd's restart" quiet lv dominfo "$service-0"
else
    echo "# SKIP the libvirtd-loss part: libvirtd was running before the test"
fi
check "clone-destroy removes both" \
    quiet "$sporectl" clone-destroy --timeout 0 --pool "$pool" "$service-0" "$service-1"
check "nothing is left" test -z "$(domains_of "$service")$(lv vol-list "$pool")"
finish
