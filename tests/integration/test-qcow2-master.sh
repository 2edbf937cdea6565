#!/bin/bash
# test-qcow2-master.sh SPORECTL SPORE_AGENT PLUGIN: a compressed qcow2
# master (qemu-img convert -c of the test guest's disk.raw), indexed as the
# file the origin serves, served lazily through the shim: the clone's
# overlay is backed by the qcow2 over NBD (backing format qcow2, from the
# manifest's <image format="qcow2">), customized with libguestfs through
# it and booted under libvirtd + QEMU: by `sporectl clone-create`, and by a
# site (spored indexing the qcow2 from the origin, an agent creating the
# clone of a submitted manifest).  The raw master is cloned and booted
# the same way, cold, and the bytes each fetched are reported side by side
# (docs/benchmarks.md).  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
src=$(cd "$(dirname "$0")/../.." && pwd)
svc_q=spore-test-qcow2
svc_r=spore-test-qcow2raw
pool=spore-test-qcow2
pids=()
work=""
libvirt_state=""

cleanup() {
    [ -n "${SITE:-}" ] && site_stop
    remove_leftovers "$svc_q" "$pool"
    remove_leftovers "$svc_r" "$pool"
    for p in "${pids[@]}" $(cat "$work"/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    [ "$libvirt_state" = started ] && "$src/scripts/libvirt-down"
    sleep 0.2
    [ -n "$work" ] && rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || skip_all "needs root to run libvirtd"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
command -v qemu-system-x86_64 >/dev/null || skip_all "qemu-system-x86_64 is not installed"
command -v qemu-img >/dev/null || skip_all "qemu-img (qemu-utils) is not installed"
[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd is not installed"
ls /boot/vmlinuz-* >/dev/null 2>&1 || skip_all "no kernel in /boot (linux-image-amd64)"

guest=$("$src/scripts/build-test-guest") && [ -f "$guest/disk.raw" ] ||
    { echo "Bail out! cannot build the test guest"; exit 1; }
# QEMU runs as libvirt-qemu: everything it opens must be reachable
work=$(mktemp -d /var/tmp/spore-qcow2.XXXXXX)
chmod 0755 "$work"
mkdir -p "$work/www" "$work/state" "$work/run"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
ln -s "$guest/disk.raw" "$work/www/disk.raw"
check "a compressed qcow2 master is made from the test guest" \
    quiet qemu-img convert -c -O qcow2 "$guest/disk.raw" "$work/www/disk.qcow2"
qsize=$(stat -c %s "$work/www/disk.qcow2")
rsize=$(stat -L -c %s "$guest/disk.raw")
echo "# masters: raw $rsize bytes ($(nonzero_bytes "$guest/disk.raw") non-zero), qcow2 $qsize bytes"
libvirt_state=$("$src/scripts/libvirt-up") || { echo "Bail out! libvirtd does not start"; exit 1; }
remove_leftovers "$svc_q" "$pool"
remove_leftovers "$svc_r" "$pool"
virt_type=$("$src/scripts/detect-virt-type" "$guest/vmlinuz")
echo "# domain type: $virt_type (detected)"
port=$(free_port)
start_origin "$work/www" "$port" "$work"

ctl() { "$sporectl" --agent "$work/run/control.sock" "$@"; }
"$agent_bin" --state-dir "$work/state" --run-dir "$work/run" --plugin "$plugin" \
    --shim-timeout 30 --metrics none >>"$work/agent.log" 2>&1 &
pids+=($!)
check "the agent starts" wait_until 20 quiet ctl agent-image-list
# image_field HEX FIELD...: a field of agent-image-show's image object
image_field() {
    ctl --json agent-image-show "$1" | python3 -c '
import json, sys
v = json.load(sys.stdin)["image"]
for k in sys.argv[1:]:
    v = v[k]
print(v)' "${@:2}"
}

# --- the qcow2 master: indexed as the file the origin serves
"$sporectl" image-index -o "$work/q.idx" "$work/www/disk.qcow2" >"$work/q.id" 2>/dev/null
"$sporectl" image-index -o "$work/r.idx" "$guest/disk.raw" >"$work/r.id" 2>/dev/null
qhex=$(sed 's/^sha256://' "$work/q.id") rhex=$(sed 's/^sha256://' "$work/r.id")
check "the agent takes the qcow2 master's index" \
    quiet ctl agent-image-add "$work/q.idx" "http://127.0.0.1:$port/disk.qcow2"
check "... whose image is the qcow2 file itself ($qsize bytes)" \
    test "$(image_field "$qhex" size)" = "$qsize"
quiet ctl agent-image-add "$work/r.idx" "http://127.0.0.1:$port/disk.raw"
quri=$(ctl agent-image-serve "$qhex")
ruri=$(ctl agent-image-serve "$rhex")
check "the shim serves both masters" test -n "$quri" -a -n "$ruri"
check "QEMU reads the qcow2 master over NBD as qcow2 of the raw master's size" \
    test "$(qemu-img info -U -f qcow2 --output=json "$quri" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" = "$rsize"

# no_timer_check: on a loaded machine TCG is slow enough for the guest
# kernel's IO-APIC timer check to fail and panic before any disk read
manifest() { # manifest SERVICE FORMAT FILE
    cat >"$3" <<EOF
<service xmlns="urn:spore:manifest:1" name="$1">
  <image name="test-guest-$2" format="$2">
    <origin url="http://127.0.0.1:$port/disk.$2"/>
  </image>
  <vm hypervisor="$virt_type">
    <vcpus>1</vcpus>
    <memory unit="MiB">256</memory>
    <boot kernel="$work/vmlinuz" initrd="$work/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet no_timer_check"/>
  </vm>
  <customize>
    <hostname>$2-{index}</hostname>
    <file path="/etc/motd" mode="0644">customized through a $2 master
</file>
  </customize>
  <scaling min="1" max="2"/>
</service>
EOF
}
manifest "$svc_q" qcow2 "$work/q.xml"
manifest "$svc_r" raw "$work/r.xml"
export SPORE_VIRT_TYPE=$virt_type LIBGUESTFS_BACKEND=direct
export SPORE_INSPECT_CACHE=$work/inspect
[ "$virt_type" = kvm ] || export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
pool_opts=(--pool "$pool" --pool-dir "$work/pool" --console-dir "$work")

out=$("$sporectl" clone-create --image "$quri" --image-id "sha256:$qhex" \
    --image-format raw "${pool_opts[@]}" --no-start "$work/q.xml" 0 2>&1)
check "a master given as raw whose manifest says qcow2 is refused, saying so" \
    grep -q "given as 'raw' but .*'qcow2'" <<<"$out"
check "... before anything was made" test ! -e "$work/pool/$svc_q-0.qcow2"

# clone_boot SERVICE HEX URI MANIFEST: create (customize) and boot clone 0,
# cold; sets cust_bytes and boot_bytes (fetched by each step) and booted_ok
clone_boot() {
    local before after
    before=$(image_field "$2" fetched_bytes origin)
    check "clone-create customizes a clone of $1 through the shim" \
        quiet "$sporectl" clone-create --image "$3" --image-id "sha256:$2" \
        "${pool_opts[@]}" --no-start "$4" 0
    after=$(image_field "$2" fetched_bytes origin)
    cust_bytes=$((after - before))
    check "... and virsh starts it" quiet virsh -c qemu:///system start "$1-0"
    booted_ok=no
    wait_until 1200 booted "$work/$1-0.log" && booted_ok=yes
    boot_bytes=$(($(image_field "$2" fetched_bytes origin) - after))
}

clone_boot "$svc_q" "$qhex" "$quri" "$work/q.xml"
check "the qcow2 master's overlay is backed by the shim's export, format qcow2" \
    test "$(qemu-img info -U --output=json "$work/pool/$svc_q-0.qcow2" |
        python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["backing-filename"], i["backing-filename-format"])')" = "$quri qcow2"
check "the clone of the qcow2 master boots to its init" test "$booted_ok" = yes
check "... with its customized hostname" \
    grep -qa "spore-guest: hostname=qcow2-0" "$work/$svc_q-0.log"
check "... and its customized file" \
    grep -qa "spore-guest: motd: customized through a qcow2 master" "$work/$svc_q-0.log"
[ "$booted_ok" = yes ] ||
    { echo "# console:"; tr -d '\r' <"$work/$svc_q-0.log" 2>/dev/null | tail -20 | sed 's/^/#   /'; }
q_cust=$cust_bytes q_boot=$boot_bytes

clone_boot "$svc_r" "$rhex" "$ruri" "$work/r.xml"
check "the clone of the raw master boots to its init" test "$booted_ok" = yes
r_cust=$cust_bytes r_boot=$boot_bytes

q_total=$((q_cust + q_boot)) r_total=$((r_cust + r_boot))
echo "# fetched from the origin, customize + boot:"
echo "#   qcow2 master: $q_cust + $q_boot = $q_total bytes of a $qsize-byte file"
echo "#   raw master:   $r_cust + $r_boot = $r_total bytes of a $rsize-byte file"
echo "#   qcow2 / raw:  $(python3 -c "print(f'{$q_total / max($r_total, 1):.2f}')")"
check "customizing and booting the qcow2 clone fetched from the origin (the lazy path)" \
    test "$q_total" -gt 0
check "... under 20% of the qcow2 file" \
    test $((q_total * 100)) -lt $((qsize * 20))

# a qcow2 master that names a file of the host as its backing file: QEMU
# would open it for the guest; clone-create refuses it, naming why
printf 'HOST-SECRET' >"$work/secret.raw"
truncate -s 1M "$work/secret.raw"
quiet qemu-img create -f qcow2 -F raw -b "$work/secret.raw" "$work/www/evil.qcow2"
"$sporectl" image-index -o "$work/e.idx" "$work/www/evil.qcow2" >"$work/e.id" 2>/dev/null
ehex=$(sed 's/^sha256://' "$work/e.id")
quiet ctl agent-image-add "$work/e.idx" "http://127.0.0.1:$port/evil.qcow2"
euri=$(ctl agent-image-serve "$ehex")
out=$("$sporectl" clone-create --image "$euri" --image-id "sha256:$ehex" \
    "${pool_opts[@]}" --no-start "$work/q.xml" 1 2>&1)
check "a qcow2 master naming a backing file on the host is refused" \
    grep -q "names a backing file" <<<"$out"
check "... and no clone of it was made" \
    test ! -e "$work/pool/$svc_q-1.qcow2" -a -z "$(virsh -q -c qemu:///system list --all --name | grep -x "$svc_q-1")"

# --- the site: spored registers the qcow2 master (indexing it from the
# origin) and an agent clones a submitted manifest of it
SITE=$work/site BUILD=$(dirname "$(dirname "$sporectl")") SITE_TAG=qcow2
# (host names are matched by site_stop across the shared libvirtd: one of
# this test's own)
SITE_VIRT=$virt_type
mkdir -p "$SITE"
. "$src/scripts/site-lib.sh"
svc_s=spore-test-qcow2site
site_ctl() { "$sporectl" -c "$SITE/m/control.sock" "$@"; }
check "spored starts" site_manager_start
site_host_key qcow2-hv1 >"$SITE/hosts.d/qcow2-hv1.pub"
site_agent_start qcow2-hv1
host_up() {
    site_ctl --json host-list | python3 -c '
import json, sys
print([h["state"] for h in json.load(sys.stdin)["hosts"] if h["name"] == "qcow2-hv1"])' | grep -q up
}
check "its agent qcow2-hv1 is up" wait_until 60 host_up
check "image-add indexes the qcow2 master from the origin" \
    quiet site_ctl image-add test-guest-qcow2 "http://127.0.0.1:$port/disk.qcow2"
check "... with the id image-index gives the file" \
    test "$(site_ctl --json image-list | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["id"])')" = "sha256:$qhex"
sed -e "s/name=\"$svc_q\"/name=\"$svc_s\"/" -e 's/<image name="[^"]*"/<image name="test-guest-qcow2"/' \
    -e 's/qcow2-{index}/site-{index}/' "$work/q.xml" >"$work/s.xml"
check "submit --wait of a manifest of the qcow2 master: its clone runs" \
    quiet timeout 900 "$sporectl" -c "$SITE/m/control.sock" submit --wait "$work/s.xml"
check "the agent backed its overlay by the qcow2 over NBD (format qcow2)" \
    test "$(qemu-img info -U --output=json "$SITE/qcow2-hv1/pool/$svc_s-0.qcow2" |
        python3 -c 'import json,sys; i=json.load(sys.stdin); print(i["backing-filename"].startswith("nbd+unix:///'"$qhex"'"), i["backing-filename-format"])')" = "True qcow2"
check "the site's clone boots with its customized hostname" \
    wait_until 1200 grep -qa "spore-guest: hostname=site-0" "$SITE/qcow2-hv1/console/$svc_s-0.log"
site_stop
SITE=""

# last, as it reads the whole disk: what the guest saw is the raw master's
check "the guest-visible content of the qcow2 master is the raw master's" \
    quiet qemu-img compare -U -f qcow2 -F raw "$quri" "$guest/disk.raw"

finish
