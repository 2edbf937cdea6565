#!/bin/bash
# test-autoscale.sh BUILD-DIR: a service grows by its rule under request
# load pushed with `sporectl request`, the new clone boots with its own
# hostname, the cooldown survives a kill -9 of the manager in the middle of
# it (under continued load, with room to grow, nothing happens before it
# ends), and once the load stops the service shrinks back to min after its
# stabilization window (shortened in the manifest), the removed clone's
# volume gone.  spored, two agents, libvirtd + QEMU,
# libguestfs, nbdkit and a lighttpd origin.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
site_test_prepare scale
SITE_TAG=a$$
# a scaled-down clone that ignores the ACPI shutdown is powered off after
# 15 s, not the default 60: the whole test stays under 5 minutes
printf '[spored]\nshutdown_timeout=15\n' >"$SITE/spored.conf"
SITE_SPORED_ARGS="--config $SITE/spored.conf"
site_test_start

mkdir -p "$SITE/www"
cp "$guest/vmlinuz" "$guest/initrd.img" "$SITE/"
cp --sparse=always "$guest/disk.raw" "$SITE/www/disk.raw"
port=$(free_port)
start_origin "$SITE/www" "$port" "$SITE" || { echo "Bail out! lighttpd does not start"; exit 1; }

ctl() { sporectl_site "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
event_seen() { ctl --json events --since 0 2>/dev/null | grep -q -- "$1"; }
desired() { ctl --json service-show web | jget 'r["service"]["desired"]'; }
running() { ctl --json service-show web | jget 'r["service"]["running"]'; }
at() { [ "$(desired)" = "$1" ] && [ "$(running)" = "$1" ]; }

check "spored starts" site_manager_start
for h in hv1 hv2; do site_host_key "$h" >"$SITE/hosts.d/$h.pub"; site_agent_start "$h"; done
quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"
cat >"$SITE/web.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="web">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet"/>
  </vm>
  <customize><hostname>{service}-{index}</hostname></customize>
  <scaling min="1" max="3" initial="1" cooldown="120s" stabilization="20s">
    <rule metric="requests" above="30" add="1"/>
    <rule metric="requests" below="5" remove="1"/>
  </scaling>
</service>
EOF
started=$(date +%s)
check "submit --wait: one clone runs" \
    quiet timeout 600 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" submit --wait "$SITE/web.xml"
check "service-show lists the rules with their last values" \
    wait_until 20 eval 'ctl --json service-show web | jget "r[\"service\"][\"rules\"][0][\"value\"]" | grep -qx "0.0"'

# --- load: 100 requests every 5 s, 1200 a minute (600 per clone of 2)
load() { while :; do "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" request web 100 >/dev/null 2>&1; sleep 5; done; }
load &
loader=$!
pids+=("$loader")
check "under load, rule 1 scales the service up to 2" wait_until 60 eval '[ "$(desired)" = 2 ]'
check "the decision is an event with its rule, value and counts" \
    event_seen "service web: rule 1 (requests above 30.*1 -> 2 clones"
cooldown=$(ctl --json service-show web | jget 'r["service"]["cooldown_until"]')
remaining() { python3 -c "import time; print(int($cooldown - time.time()))"; }

# --- the cooldown survives a kill -9 of the manager in the middle of it
check "the cooldown is running when spored is killed ($(remaining) s left of 120)" \
    test "$(remaining)" -gt 60
site_manager_kill KILL
check "spored restarts" site_manager_start
after=$(ctl --json service-show web | jget 'r["service"]["cooldown_until"]')
echo "# cooldown until $cooldown before the restart, $after after"
check "with the same cooldown (it is in the state database)" \
    test "$after" = "$cooldown"
scaled_up() { ctl --json events --since 0 | jget 'sum(e["kind"] == "scaled-up" for e in r["events"])'; }
fires() { ctl --json service-show web | jget 'r["service"]["rules"][0]["fires"]'; }
check "under the continued load rule 1 fires again (max is 3: room to grow)" \
    wait_until 30 eval '[ "$(fires)" = True ]'
sleep 20 # four evaluations more
check "but before cooldown_until nothing happens: desired 2, one scaled-up event" \
    eval '[ "$(remaining)" -gt 0 ] && [ "$(desired)/$(scaled_up)" = 2/1 ]'

# --- the load stops (its last requests leave the 60 s window well before
# the cooldown ends): back to min after the stabilization window
kill "$loader"
stopped=$(date +%s)
check "the new clone runs" wait_until 300 at 2
h1=$(ctl --json clone-list web | jget "[c['host'] for c in r['clones'] if c['name']=='web-1'][0]")
check "web-1 boots with its own hostname (on $h1)" \
    wait_until 120 grep -qa "spore-guest: hostname=web-1" "$SITE/$h1/console/web-1.log"
check "without load the service shrinks back to 1" wait_until 300 eval '[ "$(desired)" = 1 ]'
shrunk=$(date +%s)
echo "# shrank $((shrunk - stopped)) s after the load stopped (60 s request window + 20 s stabilization, and the end of the cooldown)"
check "not before the request window and the stabilization had passed" \
    test $((shrunk - stopped)) -ge 70
check "by rule 2, as an event" event_seen "service web: rule 2 (requests below 5"
check "not before the cooldown had ended" \
    test "$(ctl --json events --since 0 | jget '[e["time"] for e in r["events"] if e["kind"] == "scaled-down"][0] >= '"$cooldown")" = True
check "web-1 is shut down and removed" wait_until 240 at 1
check "and its volume is gone from $h1's pool" \
    wait_until 60 eval '! virsh -q -c qemu:///system vol-list "spore-$SITE_TAG-$h1" | grep -q "web-1.qcow2" && [ ! -e "$SITE/$h1/pool/web-1.qcow2" ]'
check "no scaling action flapped: exactly one up and one down" \
    test "$(ctl --json events --since 0 | jget 'sum(e["kind"] in ("scaled-up","scaled-down") for e in r["events"])')" = 2
echo "# $(( $(date +%s) - started )) s from submit to here"
if [ "$failed" -gt 0 ]; then
    echo "# events:"
    ctl events --since 0 2>&1 | tail -n 40 | sed 's/^/#   /'
fi
finish
