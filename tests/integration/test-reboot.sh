#!/bin/bash
# test-reboot.sh BUILD-DIR: a host's reboot, simulated — spored and one
# spore-agent (rb1, a name no other test uses) with two clones of the busybox test guest, libvirtd +
# QEMU, libguestfs, nbdkit shims and a lighttpd origin.
#
#   The reboot: the clones' domains are destroyed (powered off, still
#   defined), the agent, its shims and spored are killed with SIGKILL and
#   the agent's run directory is emptied; libvirtd is restarted when this
#   test started it (as on a fresh machine and in CI; a libvirtd that was
#   already running is someone else's and stays); then the agent and
#   spored start again.  libvirtd finds what it finds after a reboot:
#   persistent domains, shut off.
#
#   Required: both clones run again and boot, on their old overlays (same
#   files, same UUIDs, no customization), and no chunk the cache held
#   before is fetched from the origin again.  One host, so that every
#   fetch is an origin fetch and shows in its access log.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
site_test_prepare reboot
SITE_TAG=b$$
SITE_LOST_AFTER=300 # agents stalled by a loaded, shared libvirtd are not lost
site_test_start

site_test_origin "$RANGE_LOG_FORMAT"

ctl() { sporectl_site "$@"; }
db() { sqlite3 -cmd '.timeout 5000' "$SITE/manager/spored.db" "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
state() { virsh -q -c qemu:///system domstate "$1" 2>/dev/null | head -n 1; }
uuid() { virsh -q -c qemu:///system domuuid "$1" 2>/dev/null; }
boots() { grep -ac 'spore-guest: boot complete' "$SITE/rb1/console/$1.log" 2>/dev/null; }
# chunks FROM-LINE: the 64 KiB chunks the origin served from that line of
# its access log on (every chunk of each Range), sorted, one a line
chunks() {
    tail -n +"$1" "$SITE/access.log" | python3 -c '
import re, sys
out = set()
for line in sys.stdin:
    m = re.search(r"bytes=(\d+)-(\d+)", line)
    if m:
        out.update(range(int(m.group(1)) // 65536, int(m.group(2)) // 65536 + 1))
print("\n".join(str(c) for c in sorted(out)))'
}

cat >"$SITE/booty.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="booty">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet noapic"/>
  </vm>
  <customize><hostname>{service}-{index}</hostname></customize>
  <scaling min="1" max="4" initial="2"/>
</service>
EOF

check "spored starts" site_manager_start
site_host_key rb1 >"$SITE/hosts.d/rb1.pub"
site_agent_start rb1
check "rb1 is up" wait_until 60 eval '[ "$(ctl --json host-list | jget "r[\"hosts\"][0][\"state\"]")" = up ]'
check "image-add" quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"
check "2 clones run (submit --wait)" \
    quiet timeout 900 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" submit --wait --timeout 880 "$SITE/booty.xml"
for c in booty-0 booty-1; do
    check "$c has booted" wait_until 1200 booted "$SITE/rb1/console/$c.log"
done
sleep 2 # the last chunks' bits are set after their data is durable

# --- what must survive
before_uuids="$(uuid booty-0) $(uuid booty-1)"
before_inodes=$(stat -c %i "$SITE/rb1/pool/booty-0.qcow2" "$SITE/rb1/pool/booty-1.qcow2" | tr '\n' ' ')
b0=$(boots booty-0) b1=$(boots booty-1)
cached=$(chunks 1)
log_lines=$(wc -l <"$SITE/access.log")
agent_lines=$(wc -l <"$SITE/rb1.log")
check "the origin served chunks before the reboot" test -n "$cached"

# --- the reboot
site_manager_kill KILL
site_agent_kill rb1 KILL
for p in $(cat "$SITE"/rb1/run/shims/*.pid 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
for c in booty-0 booty-1; do virsh -q -c qemu:///system destroy "$c" >/dev/null 2>&1; done
check "the clones are off, still defined" \
    test "$(state booty-0)/$(state booty-1)" = "shut off/shut off"
rm -rf "$SITE"/rb1/run/*
if [ "$libvirt_state" = started ]; then
    "$src/scripts/libvirt-down"
    libvirt_state=$("$src/scripts/libvirt-up") ||
        { echo "Bail out! libvirtd does not start again"; exit 1; }
    check "libvirtd restarted (this test started it); the clones are still off" \
        test "$(state booty-0)/$(state booty-1)" = "shut off/shut off"
else
    echo "# libvirtd was running before this test: not restarted"
fi
t0=$(date +%s.%N)
check "spored starts again" site_manager_start
site_agent_start rb1

# --- every clone that should run, runs again
check "the manager starts both clones again" \
    wait_until 600 eval 'db "SELECT message FROM events" | grep -Eq "start booty-[01], booty-[01] on rb1 \(reported shut off\)"'
check "both run again" wait_until 1200 eval '[ "$(state booty-0)/$(state booty-1)" = "running/running" ]'
# the console logs are appended to: one more "boot complete" each
check "booty-0 boots again" wait_until 1200 eval '[ "$(boots booty-0)" -gt "$b0" ]'
check "booty-1 boots again" wait_until 1200 eval '[ "$(boots booty-1)" -gt "$b1" ]' 
t1=$(date +%s.%N)
echo "# from the restart to both clones booted: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s"
check "the manager sees them running" \
    wait_until 60 eval '[ "$(ctl --json service-show booty | jget "r[\"service\"][\"running\"]")" = 2 ]'
check "same domains (UUIDs)" test "$(uuid booty-0) $(uuid booty-1)" = "$before_uuids"
check "on their old overlays (same files)" \
    test "$(stat -c %i "$SITE/rb1/pool/booty-0.qcow2" "$SITE/rb1/pool/booty-1.qcow2" | tr '\n' ' ')" = "$before_inodes"
check "nothing was created or customized again" \
    test -z "$(tail -n +"$((agent_lines + 1))" "$SITE/rb1.log" | grep -Ei 'clone-create|customiz')"
again=$(comm -12 <(echo "$cached") <(chunks "$((log_lines + 1))") | wc -l)
echo "# chunks from the origin: $(echo "$cached" | wc -l) before the reboot, $(chunks "$((log_lines + 1))" | grep -c .) after, $again of them again"
check "no chunk cached before the reboot was fetched again" test "$again" -eq 0
finish
