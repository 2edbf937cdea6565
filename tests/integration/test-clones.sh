#!/bin/bash
# test-clones.sh SPORECTL: two clones of one master made by `sporectl
# clone-create` (overlay volumes in a dir pool of the test's own, customized
# in one libguestfs launch, defined as libvirt domains), started with virsh
# and booted under libvirtd + QEMU: each prints its own hostname, its
# customized file and its first-boot command's output on its console, and
# after a virsh shutdown and start, does not run its first-boot commands
# again.  Inside the overlays (guestfish): modes, owners, ssh keys for root
# and for another user, /etc/hosts, the identity reset, and the systemd
# unit a guest with /etc/systemd/system gets.  Then idempotency (same UUID:
# no-op; another: error) and clone-destroy (graceful ACPI shutdown,
# power-off, volumes removed).  The master is never written.
# TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
service=spore-test-clones
pool=spore-test-clones
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
command -v guestfish >/dev/null || skip_all "libguestfs-tools is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"

guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
    { echo "Bail out! cannot build the test guest"; exit 1; }
work=$(mktemp -d /var/tmp/spore-clones.XXXXXX)
chmod 0755 "$work"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
master_sum=$(sha256sum <"$guest/disk.raw" | cut -c1-64)
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
remove_leftovers "$service" "$pool"
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
export SPORE_VIRT_TYPE=$virt_type # the appliance follows the same probe
export LIBGUESTFS_BACKEND=direct   # and so does guestfish below
export SPORE_INSPECT_CACHE=$work/inspect # start cold: inspect, then map
[ "$virt_type" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
echo "# domain type: $virt_type (detected)"
key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@site"
key2="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7hV0cVq9mDxKOhGc1n8S4kR0mTnZ3yVwQfN2uEo5aP app@site"

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
    <ssh-key user="spore">$key2</ssh-key>
    <firstboot>echo first boot of {hostname}</firstboot>
    <firstboot>echo failing on purpose; exit 3</firstboot>
  </customize>
  <scaling min="1" max="4" initial="2"/>
</service>
EOF
check "the manifest is valid" quiet "$sporectl" validate "$work/service.xml"

lv() { virsh -q -c qemu:///system "$@"; }
pool_opts=(--pool "$pool" --pool-dir "$work/pool" --console-dir "$work/console")
start=$(date +%s)
check "clone-create makes two clones, customized in one appliance launch" \
    quiet "$sporectl" clone-create --image "$guest/disk.raw" --host host-a \
    --no-start "${pool_opts[@]}" "$work/service.xml" 0 1
echo "# clone-create of 2 clones took $(($(date +%s) - start)) s"
check "the master's inspected layout is cached" \
    test "$(ls "$work/inspect" | wc -l)" -eq 1
check "spore's dir pool was created, with autostart" \
    grep -q "^Autostart: *yes" <(virsh -c qemu:///system pool-info "$pool")
check "virsh vol-list shows both overlays" \
    test "$(lv vol-list "$pool" | awk '{print $1}' | sort | tr '\n' ' ')" = "$service-0.qcow2 $service-1.qcow2 "
check "each overlay records its backing file and format" \
    test "$(qemu-img info --output=json "$work/pool/$service-0.qcow2" |
        python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["backing-filename"], i["backing-filename-format"])')" = "$guest/disk.raw raw"
check "virsh list --all shows both clones, shut off (--no-start)" \
    test "$(domains_of "$service")" = "$service-0 $service-1 "

# a guest with /etc/systemd/system gets a systemd unit for its first-boot
# commands instead: an image with that layout (no systemd runs here, so it
# is only looked at), customized offline by clone-prepare, three clones in
# one appliance; its fstab names the root /dev/vda, as the guest sees it
# (the appliance took that for its first drive: every clone's
# customization went into clone 0)
sd=$work/systemd-root
mkdir -p "$sd/bin" "$sd/etc/systemd/system" "$sd/var/lib" "$work/systemd"
printf '127.0.0.1\tlocalhost\n' >"$sd/etc/hosts"
echo '/dev/vda / ext4 rw 0 1' >"$sd/etc/fstab"
echo 'root:x:0:0:root:/root:/bin/sh' >"$sd/etc/passwd"
printf 'NAME="spore systemd layout"\nID=spore-systemd\n' >"$sd/etc/os-release"
mkfs.ext4 -q -F -E root_owner=0:0 -d "$sd" "$work/systemd.raw" 16M >&2
cat >"$work/systemd.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="spore-test-systemd">
  <image name="systemd-layout"><origin url="file://$work/systemd.raw"/></image>
  <vm><vcpus>1</vcpus><memory unit="MiB">64</memory></vm>
  <customize>
    <firstboot>echo first boot of {hostname}</firstboot>
    <firstboot>false</firstboot>
  </customize>
  <scaling min="1" max="3"/>
</service>
EOF
check "clone-prepare customizes an image with a systemd layout" \
    quiet "$sporectl" clone-prepare --image "$work/systemd.raw" \
    --dir "$work/systemd" "$work/systemd.xml" 0 1 2
hostnames=$(guestfish --ro -a "$work/systemd/spore-test-systemd-0.qcow2" \
    -a "$work/systemd/spore-test-systemd-1.qcow2" \
    -a "$work/systemd/spore-test-systemd-2.qcow2" <<'EOF' 2>&1
run
mount-ro /dev/sda /
cat /etc/hostname
umount-all
mount-ro /dev/sdb /
cat /etc/hostname
umount-all
mount-ro /dev/sdc /
cat /etc/hostname
EOF
)
check "and each of the three has its own hostname ($(echo $hostnames))" \
    test "$(echo $hostnames)" = "spore-test-systemd-0 spore-test-systemd-1 spore-test-systemd-2"

# what cannot be seen on a console: contents, modes and owners inside the
# clone (sda) and the systemd-layout clone (sdb); "echo @NAME" starts the
# output of section NAME
out=$(guestfish --ro -a "$work/pool/$service-0.qcow2" \
    -a "$work/systemd/spore-test-systemd-0.qcow2" <<'EOF' 2>&1
run
mount-ro /dev/sda /
echo @/root/.ssh
stat /root/.ssh
echo @/root/.ssh/authorized_keys
stat /root/.ssh/authorized_keys
echo @/etc/motd
stat /etc/motd
echo @config
stat "/opt/app/config & <data>.conf"
echo @/home/spore/.ssh
stat /home/spore/.ssh
echo @/home/spore/.ssh/authorized_keys
stat /home/spore/.ssh/authorized_keys
echo @root-keys
cat /root/.ssh/authorized_keys
echo @spore-keys
cat /home/spore/.ssh/authorized_keys
echo @config-content
cat "/opt/app/config & <data>.conf"
echo @hosts
cat /etc/hosts
echo @machine-id
filesize /etc/machine-id
echo @etc-ssh
ls /etc/ssh
umount-all
mount-ro /dev/sdb /
echo @unit
cat /etc/systemd/system/spore-firstboot.service
echo @wants
readlink /etc/systemd/system/multi-user.target.wants/spore-firstboot.service
echo @firstboot.sh
stat /usr/local/lib/spore/firstboot.sh
echo @firstboot.sh-content
cat /usr/local/lib/spore/firstboot.sh
echo @firstboot.d
is-dir /etc/spore/firstboot.d
EOF
)
# section NAME: what the guestfish commands after "echo @NAME" printed
section() { awk -v s="@$1" '/^@/ { on = ($0 == s); next } on' <<<"$out"; }
# perms NAME: "MODE UID:GID" of what section NAME stat'ed
perms() {
    section "$1" | awk '/^mode:/ { m = $2 } /^uid:/ { u = $2 } /^gid:/ { g = $2 }
        END { printf "%o %s:%s", m % 4096, u, g }'
}
check "~root/.ssh is 0700, root's ($(perms /root/.ssh))" \
    test "$(perms /root/.ssh)" = "700 0:0"
check "~root/.ssh/authorized_keys is 0600, root's ($(perms /root/.ssh/authorized_keys))" \
    test "$(perms /root/.ssh/authorized_keys)" = "600 0:0"
check "/etc/motd (nobody's in the master) is 0640, root's ($(perms /etc/motd))" \
    test "$(perms /etc/motd)" = "640 0:0"
check "a new file from the manifest is 0600, root's ($(perms config))" \
    test "$(perms config)" = "600 0:0"
check "authorized_keys holds the manifest's key" \
    grep -qxF "$key" <(section root-keys)
# the guest's user spore: uid 1000, gid 1001 (scripts/build-test-guest)
check "~spore/.ssh is 0700, spore's ($(perms /home/spore/.ssh))" \
    test "$(perms /home/spore/.ssh)" = "700 1000:1001"
check "~spore/.ssh/authorized_keys is 0600, spore's ($(perms /home/spore/.ssh/authorized_keys))" \
    test "$(perms /home/spore/.ssh/authorized_keys)" = "600 1000:1001"
check "and holds only spore's key" test "$(section spore-keys)" = "$key2"
check "a file whose path has XML metacharacters gets its expanded content" \
    grep -qx 'name=spore-test-clones&index=0' <(section config-content)
check "/etc/hosts keeps localhost and maps the clone's hostname, once" \
    test "$(section hosts)" = "$(printf '127.0.0.1\tlocalhost\n127.0.1.1\tclone-0')"
check "the clone's machine-id is emptied" test "$(section machine-id)" = 0
check "its ssh host keys are removed, the rest of /etc/ssh kept ($(section etc-ssh | tr '\n' ' '))" \
    test "$(section etc-ssh)" = sshd_config
# the unit runs the script only while the done file is missing, and
# creates it before the script runs (ExecStartPre=), never after
unit=$(section unit)
check "systemd layout: spore-firstboot.service runs only without the done file" \
    grep -qx 'ConditionPathExists=!/var/lib/spore/firstboot.done' <<<"$unit"
check "and creates the done file before the commands run" \
    test "$(grep -E '^Exec' <<<"$unit" | sed 's/=.*//' | tr '\n' ' ')" = "ExecStartPre ExecStart "
check "in ExecStartPre=" \
    grep -q "^ExecStartPre=/bin/sh -c 'mkdir -p /var/lib/spore && touch /var/lib/spore/firstboot.done" <<<"$unit"
check "and runs the first-boot script, a oneshot wanted by multi-user.target" \
    test "$(grep -E '^(ExecStart|Type|WantedBy)=' <<<"$unit" | tr '\n' ' ')" = \
    "Type=oneshot ExecStart=/bin/sh /usr/local/lib/spore/firstboot.sh WantedBy=multi-user.target "
check "the unit is enabled (the multi-user.target.wants link)" \
    test "$(section wants)" = /etc/systemd/system/spore-firstboot.service
check "the script is 0755, root's ($(perms firstboot.sh))" \
    test "$(perms firstboot.sh)" = "755 0:0"
check "and holds the expanded commands in order" \
    test "$(section firstboot.sh-content | grep -v -e '^#' -e '^$' | tr '\n' '|')" = \
    "echo first boot of spore-test-systemd-0|false|"
check "no /etc/spore/firstboot.d scripts besides it" \
    test "$(section firstboot.d)" = false

# the virsh workflow of the README: the clones are ordinary domains
for i in 0 1; do
    check "virsh start clone $i" quiet lv start "$service-$i"
done
for i in 0 1; do
    console=$work/console/$service-$i.log
    check "clone $i boots" wait_until 180 booted "$console"
    check "clone $i prints its own hostname" \
        grep -qa "spore-guest: hostname=clone-$i" "$console"
    check "clone $i prints its customized motd" \
        grep -qa "spore-guest: motd: Welcome to clone-$i, clone $i of $service on host-a" "$console"
    check "clone $i runs its first-boot command" \
        grep -qa "spore-guest: firstboot output: first boot of clone-$i" "$console"
done

# a reboot, as the README's virsh workflow does it: the console log file is
# appended to; the first-boot commands, one of which failed, do not run again
console=$work/console/$service-1.log
count() { grep -ac "$1" "$console"; } # count PATTERN: lines of clone 1's log
check "clone 1's first boot ran both first-boot commands" \
    test "$(count 'spore-guest: firstboot: /etc/spore/firstboot.d/')" = 2
check "virsh shutdown clone 1" quiet lv shutdown "$service-1"
check "clone 1 powers off" \
    wait_until 120 eval 'test "$(lv domstate "$service-1")" = "shut off"'
check "virsh start clone 1 again" quiet lv start "$service-1"
check "clone 1 boots a second time" \
    wait_until 180 eval 'test "$(count "spore-guest: boot complete")" = 2'
check "printing its hostname again" \
    test "$(count "spore-guest: hostname=clone-1")" = 2
check "but its first-boot commands ran on the first boot only" \
    test "$(count 'spore-guest: firstboot: /etc/spore/firstboot.d/')/$(count 'firstboot output: first boot of clone-1')" = 2/1

check "virsh dumpxml shows spore's metadata" \
    grep -q "<spore:clone .*service=\"$service\" index=\"1\"" \
    <(lv dumpxml "$service-1")
check "the master image was never written" \
    test "$(sha256sum <"$guest/disk.raw" | cut -c1-64)" = "$master_sum"

# idempotency, keyed by name and UUID
uuid0=$(lv domuuid "$service-0")
check "creating an existing, matching clone again changes nothing" \
    test "$("$sporectl" clone-create --image "$guest/disk.raw" --host host-a \
        "${pool_opts[@]}" "$work/service.xml" 0 2>/dev/null)" = "$service-0: exists, unchanged"
check "its UUID is derived from what made it (--json)" \
    grep -q "\"uuid\":\"$uuid0\",\"outcome\":\"existed\"" \
    <("$sporectl" --json clone-create --image "$guest/disk.raw" --host host-a \
        "${pool_opts[@]}" "$work/service.xml" 0 2>/dev/null)
check "it kept running, with the same UUID" \
    test "$(lv domstate "$service-0")/$(lv domuuid "$service-0")" = "running/$uuid0"
err=$("$sporectl" clone-create --generation 2 --image "$guest/disk.raw" \
    "${pool_opts[@]}" "$work/service.xml" 0 2>&1 >/dev/null)
status=$?
check "a clone that exists but differs (another generation) is an error" \
    test "$status" = 1
check "which says so" grep -q "exists with UUID $uuid0.*different version" <<<"$err"
check "and it was not touched" \
    test "$(lv domstate "$service-0")/$(lv domuuid "$service-0")" = "running/$uuid0"

# graceful shutdown: the guest's acpid powers it off on the ACPI button
check "clone-destroy shuts clone 0 down gracefully, undefines it and removes its volume" \
    test "$("$sporectl" clone-destroy --timeout 120 "${pool_opts[@]:0:4}" "$service-0" 2>/dev/null)" = \
    "$service-0: shut down, undefined, volume removed"
check "the guest saw the power button" \
    grep -qa "spore-guest: power button" "$work/console/$service-0.log"
check "clone 0 is gone from virsh list --all" \
    test "$(domains_of "$service")" = "$service-1 "
check "and its volume from virsh vol-list" \
    test "$(lv vol-list "$pool" | awk '{print $1}' | tr '\n' ' ')" = "$service-1.qcow2 "
check "destroying it again reports it absent, successfully" \
    test "$("$sporectl" clone-destroy "${pool_opts[@]:0:4}" "$service-0" 2>/dev/null)" = "$service-0: absent"
check "with --timeout 0 clone 1 is powered off at once" \
    grep -q "powered off, undefined, volume removed" \
    <("$sporectl" clone-destroy --timeout 0 "${pool_opts[@]:0:4}" "$service-1" 2>/dev/null)
check "no clone and no volume is left" \
    test -z "$(domains_of "$service")$(lv vol-list "$pool")"

finish
