#!/bin/bash
# test-clones.sh SPORECTL: two clones of one master, customized in one
# libguestfs launch (sporectl clone-prepare), defined from spore's domain XML
# (sporectl domain-xml) and booted under libvirtd + QEMU: each prints its own
# hostname, its customized file and its first-boot command's output on its
# console.  The master is never written.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
service=spore-test-clones
work=""
libvirt_state=""

cleanup() {
    for i in 0 1; do
        virsh -q -c qemu:///system destroy "$service-$i" >/dev/null 2>&1
        virsh -q -c qemu:///system undefine "$service-$i" >/dev/null 2>&1
    done
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
work=$(mktemp -d /var/tmp/spore-clones.XXXXXX)
chmod 0755 "$work"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
master_sum=$(sha256sum <"$guest/disk.raw" | cut -c1-64)
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
export SPORE_VIRT_TYPE=$virt_type # the appliance follows the same probe
export LIBGUESTFS_BACKEND=direct   # and so does guestfish below
export SPORE_INSPECT_CACHE=$work/inspect # start cold: inspect, then map
[ "$virt_type" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
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
  <customize>
    <hostname>clone-{index}</hostname>
    <file path="/etc/motd" mode="0640">Welcome to {hostname}, clone {index} of {service} on {host}
</file>
    <file path="/opt/app/config &amp; &lt;data&gt;.conf" mode="0600">name={service}&amp;index={index}
</file>
    <ssh-key user="root">$key</ssh-key>
    <firstboot>echo first boot of {hostname}</firstboot>
  </customize>
  <scaling min="1" max="4" initial="2"/>
</service>
EOF
"$sporectl" image-index -o "$work/disk.idx" "$guest/disk.raw" >"$work/id" 2>/dev/null
check "the manifest is valid" quiet "$sporectl" validate "$work/service.xml"

start=$(date +%s)
check "two overlays are created and customized in one appliance launch" \
    quiet "$sporectl" clone-prepare --image "$guest/disk.raw" --dir "$work" \
    --host host-a "$work/service.xml" 0 1
echo "# clone-prepare of 2 clones took $(($(date +%s) - start)) s"
check "the master's inspected layout is cached" \
    test "$(ls "$work/inspect" | wc -l)" -eq 1
check "each overlay records its backing file and format" \
    test "$(qemu-img info --output=json "$work/$service-0.qcow2" |
        python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["backing-filename"], i["backing-filename-format"])')" = "$guest/disk.raw raw"

# what cannot be seen on a console: modes and owners inside the clone
out=$(guestfish --ro -a "$work/$service-0.qcow2" -i <<'EOF' 2>&1
stat /root/.ssh
stat /root/.ssh/authorized_keys
cat /root/.ssh/authorized_keys
stat /etc/motd
cat "/opt/app/config & <data>.conf"
filesize /etc/machine-id
EOF
)
modes=$(grep -E '^mode:' <<<"$out" | awk '{printf "%o ", $2 % 4096}')
check "~root/.ssh is 0700, authorized_keys 0600, /etc/motd 0640 ($modes)" \
    test "$modes" = "700 600 640 "
check "authorized_keys holds the manifest's key" grep -qxF "$key" <<<"$out"
check "a file whose path has XML metacharacters gets its expanded content" \
    grep -qx 'name=spore-test-clones&index=0' <<<"$out"
check "the clone's machine-id is emptied (filesize, the last command)" \
    test "$(tail -n 1 <<<"$out")" = 0

for i in 0 1; do
    "$sporectl" domain-xml --image "$(cat "$work/id")" \
        --overlay "$work/$service-$i.qcow2" --console-log "$work/console-$i.log" \
        "$work/service.xml" "$i" >"$work/domain-$i.xml"
    check "clone $i is defined" quiet virsh -c qemu:///system define "$work/domain-$i.xml"
    check "clone $i starts" quiet virsh -c qemu:///system start "$service-$i"
done
for i in 0 1; do
    check "clone $i boots" wait_until 180 booted "$work/console-$i.log"
    check "clone $i prints its own hostname" \
        grep -qa "spore-guest: hostname=clone-$i" "$work/console-$i.log"
    check "clone $i prints its customized motd" \
        grep -qa "spore-guest: motd: Welcome to clone-$i, clone $i of $service on host-a" "$work/console-$i.log"
    check "clone $i runs its first-boot command" \
        grep -qa "spore-guest: firstboot output: first boot of clone-$i" "$work/console-$i.log"
done
check "virsh dumpxml shows spore's metadata" \
    grep -q "<spore:clone .*service=\"$service\" index=\"1\"" \
    <(virsh -c qemu:///system dumpxml "$service-1")
check "the master image was never written" \
    test "$(sha256sum <"$guest/disk.raw" | cut -c1-64)" = "$master_sum"

finish
