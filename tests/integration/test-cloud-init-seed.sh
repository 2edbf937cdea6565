#!/bin/bash
# test-cloud-init-seed.sh SPORECTL: <customize method="cloud-init"> with the
# real libvirtd: `sporectl clone-create` of two clones launches no libguestfs
# appliance and writes each a NoCloud seed (ISO 9660 labelled cidata) beside
# its overlay in the pool; the seed's meta-data carries the domain's UUID as
# instance-id and its user-data the clone's own hostname, file, key and
# command; the domain has it as a read-only IDE cdrom, and a started clone
# (the busybox test guest: QEMU opens the ISO; the guest itself has no
# cloud-init: bench/cloud-init-boot boots one that has)
# runs.  clone-destroy removes the seed volume with the overlay, also a seed
# left by an interrupted create.  Offline, clone-prepare writes the same
# seeds beside uncustomized overlays, and domain-xml --seed attaches one.
# TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
service=spore-test-ciseed
pool=spore-test-ciseed
work=""
libvirt_state=""

cleanup() {
    remove_leftovers "$service" "$pool"
    [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"
    [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
command -v isoinfo >/dev/null || skip_all "no isoinfo (genisoimage is not installed)"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"

guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
    { echo "Bail out! cannot build the test guest"; exit 1; }
work=$(mktemp -d /var/tmp/spore-ciseed.XXXXXX)
chmod 0755 "$work"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
remove_leftovers "$service" "$pool"
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
export SPORE_VIRT_TYPE=$virt_type
export SPORE_INSPECT_CACHE=$work/inspect # stays empty: nothing is inspected
echo "# domain type: $virt_type (detected)"
key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@site"

cat >"$work/service.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="$service">
  <image name="test-guest"><origin url="file://$guest/disk.raw"/></image>
  <vm hypervisor="$virt_type">
    <vcpus>1</vcpus>
    <memory unit="MiB">256</memory>
    <boot kernel="$work/vmlinuz" initrd="$work/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet"/>
  </vm>
  <customize method="cloud-init">
    <hostname>ci-{index}</hostname>
    <file path="/etc/motd" mode="0640">Welcome to {hostname} on {host}: "quoted" # not a comment
</file>
    <ssh-key user="spore">$key</ssh-key>
    <firstboot>echo "first boot of {hostname}"</firstboot>
  </customize>
  <scaling min="1" max="4" initial="2"/>
</service>
EOF
check "the manifest is valid" quiet "$sporectl" validate "$work/service.xml"

lv() { virsh -q -c qemu:///system "$@"; }
pool_opts=(--pool "$pool" --pool-dir "$work/pool" --console-dir "$work/console")
start=$(date +%s%N)
out=$("$sporectl" clone-create --image "$guest/disk.raw" --host host-a \
    --no-start "${pool_opts[@]}" "$work/service.xml" 0 1 2>&1)
check "clone-create makes two cloud-init clones" test $? -eq 0
echo "# clone-create of 2 cloud-init clones took $((($(date +%s%N) - start) / 1000000)) ms"
printf '%s\n' "$out" | sed 's/^/# /'
check "it says it writes seeds" grep -q "writing cloud-init seeds for 2 clones" <<<"$out"
check "and launches no appliance" \
    test -z "$(grep "appliance" <<<"$out")$(ls -A "$work/inspect" 2>/dev/null)"
check "virsh vol-list shows each clone's overlay and seed" \
    test "$(lv vol-list "$pool" | awk '{print $1}' | sort | tr '\n' ' ')" = \
    "$service-0.qcow2 $service-0.seed.iso $service-1.qcow2 $service-1.seed.iso "
seed0=$work/pool/$service-0.seed.iso
check "the seed is an ISO 9660 volume labelled cidata" \
    grep -q "^Volume id: cidata$" <(isoinfo -d -i "$seed0")
md=$(isoinfo -R -i "$seed0" -x /meta-data)
ud=$(isoinfo -R -i "$seed0" -x /user-data)
printf '%s\n' "$ud" | sed 's/^/# user-data: /'
uuid0=$(lv domuuid "$service-0")
check "its meta-data's instance-id is the domain's UUID" \
    grep -qx "instance-id: \"$uuid0\"" <<<"$md"
check "its user-data is cloud-config with the clone's hostname" \
    test "$(head -n 1 <<<"$ud")/$(grep '^hostname:' <<<"$ud")" = '#cloud-config/hostname: "ci-0"'
motd_b64=$(printf 'Welcome to ci-0 on host-a: "quoted" # not a comment\n' | base64 -w0)
check "the file's content, expanded, in base64, with its mode and owner" \
    grep -qzF -e "$(printf -- '- path: "/etc/motd"\n  owner: "root:root"\n  permissions: "0640"\n  encoding: "b64"\n  content: "%s"' "$motd_b64")" <<<"$ud"
check "the user's key" grep -qF "  - \"$key\"" <<<"$ud"
check "the first-boot command" grep -qxF -e '- "echo \"first boot of ci-0\""' <<<"$ud"
check "clone 1's seed is its own" \
    grep -qx 'local-hostname: "ci-1"' <(isoinfo -R -i "$work/pool/$service-1.seed.iso" -x /meta-data)
check "the domain has the seed as a read-only IDE cdrom" \
    test "$(lv dumpxml "$service-0" | xmllint --xpath "count(/domain/devices/disk[@device='cdrom'][readonly][target/@dev='hdc'][target/@bus='ide'][source/@file='$seed0'])" -)" = 1
check "virsh start runs the clone with its seed attached" quiet lv start "$service-0"
check "its console shows the guest booted" \
    wait_until 240 booted "$work/console/$service-0.log"
check "and QEMU has the seed open" \
    grep -q "hdc.*$seed0" <(lv domblklist "$service-0")

check "clone-destroy powers clone 0 off, undefines it, removes its volumes" \
    grep -q "^$service-0: .*powered off, undefined, volume removed" \
    <("$sporectl" clone-destroy --timeout 0 "${pool_opts[@]:0:4}" "$service-0" 2>/dev/null)
check "its overlay and seed are gone from the pool" \
    test "$(lv vol-list "$pool" | awk '{print $1}' | tr '\n' ' ')" = \
    "$service-1.qcow2 $service-1.seed.iso "
check "and from the disk" test ! -e "$seed0" -a ! -e "$work/pool/$service-0.qcow2"
# what an interrupted create leaves: a seed and an overlay, no domain
lv undefine "$service-1" >/dev/null 2>&1
check "a seed without its domain (an interrupted create) is removed by clone-destroy" \
    test "$("$sporectl" clone-destroy "${pool_opts[@]:0:4}" "$service-1" 2>/dev/null)" = "$service-1: absent"
check "no clone and no volume is left" \
    test -z "$(domains_of "$service")$(lv vol-list "$pool")"

# offline, without libvirt: clone-prepare leaves the overlays as they are
# and writes each a seed whose instance-id is the UUID clone-create gives
# the clone (the same image id and generation), or --uuid
mkdir -p "$work/offline"
out=$("$sporectl" clone-prepare --image "$guest/disk.raw" --host host-a \
    --dir "$work/offline" "$work/service.xml" 0 1 2>"$work/prepare.err")
check "clone-prepare of a cloud-init manifest succeeds" test $? -eq 0
printf '%s\n' "$out" | sed 's/^/# /'
check "each line names the overlay, the seed and its UUID" \
    test "$(awk '{print $1, $2}' <<<"$out" | tr '\n' ' ')" = \
    "$work/offline/$service-0.qcow2 $work/offline/$service-0.seed.iso $work/offline/$service-1.qcow2 $work/offline/$service-1.seed.iso "
check "and launches no appliance" \
    test -z "$(grep "appliance" "$work/prepare.err")$(ls -A "$work/inspect" 2>/dev/null)"
check "the UUID is the one clone-create gave clone 0" \
    test "$(awk 'NR == 1 {print $3}' <<<"$out")" = "$uuid0"
check "the offline seed's meta-data names it" \
    grep -qx "instance-id: \"$uuid0\"" <(isoinfo -R -i "$work/offline/$service-0.seed.iso" -x /meta-data)
check "and its user-data is what the pool's seed held" \
    test "$(isoinfo -R -i "$work/offline/$service-0.seed.iso" -x /user-data)" = "$ud"
check "the overlay is not customized: no snapshot of a write, backed by the master" \
    grep -q "backing file: $guest/disk.raw" <(qemu-img info "$work/offline/$service-0.qcow2")
check "domain-xml --seed attaches it as the cdrom" \
    test "$("$sporectl" domain-xml --uuid "$uuid0" \
        --image "$("$sporectl" image-index -o "$work/disk.idx" "$guest/disk.raw" 2>/dev/null)" \
        --overlay "$work/offline/$service-0.qcow2" --seed "$work/offline/$service-0.seed.iso" \
        "$work/service.xml" 0 2>/dev/null | xmllint --xpath "count(/domain/devices/disk[@device='cdrom'][readonly][source/@file='$work/offline/$service-0.seed.iso'])" -)" = 1
check "--uuid sets the instance-id of one clone" \
    grep -qx 'instance-id: "0a1b2c3d-0000-4000-8000-000000000001"' <(
        "$sporectl" clone-prepare --image "$guest/disk.raw" --dir "$work/offline" \
            --uuid 0a1b2c3d-0000-4000-8000-000000000001 "$work/service.xml" 2 >/dev/null &&
            isoinfo -R -i "$work/offline/$service-2.seed.iso" -x /meta-data)
check "a URL master without --image-id or --uuid is a usage error, nothing made" \
    test "$("$sporectl" clone-prepare --image "nbd+unix:///x?socket=$work/none.sock" \
        --dir "$work/offline" "$work/service.xml" 3 >/dev/null 2>&1; echo $?)/$(ls "$work/offline" | grep -c -- "-3\.")" = 2/0

finish
