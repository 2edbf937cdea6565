#!/bin/bash
# test-peer-boot.sh BUILD-DIR: a guest boots on host B with the image
# already on host A, over the peer protocol, with the peer list handed out
# by the site manager — spored, two spore-agents (hv1, hv2), libvirtd +
# QEMU, libguestfs, nbdkit shims and a real HTTP origin (lighttpd, whose
# access log records the Range of each request).  TAP output.
#
#   service a (placed on hv1) boots: hv1 caches what the boot reads;
#   service b (placed on hv2, the same image) boots: the origin is asked
#   only for chunks hv1 lacked, each once, and hv2 took the rest from hv1;
#   the clone's console shows its own hostname; hv2, which never booted
#   the image, asks the manager once for the site's profile (profile-get:
#   a create names it by digest, without its chunks) and prefetches it;
#   service c (placed on hv3) boots while hv1, the one peer holding what it
#   needs, is killed (-9) with requests from hv3 outstanding: the boot
#   completes, hv3's export equals the image (qemu-img compare);
#   every chunk in the three caches verifies.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
site_test_prepare peerboot
SITE_TAG=p$$
site_test_start

mkdir -p "$SITE/www"
cp "$guest/vmlinuz" "$guest/initrd.img" "$SITE/"
ln "$guest/disk.raw" "$SITE/www/disk.raw" 2>/dev/null || cp "$guest/disk.raw" "$SITE/www/disk.raw"
port=$(free_port)
start_origin "$SITE/www" "$port" "$SITE" "$RANGE_LOG_FORMAT" ||
    { echo "Bail out! lighttpd does not start"; exit 1; }
flush_origin_log() { restart_origin "$SITE/www" "$port" "$SITE"; }
chunks_since() { range_chunks "$SITE/access.log" "$1"; }

ctl() { sporectl_site "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
host_state() { ctl --json host-list | jget "[h['state'] for h in r['hosts'] if h['name']=='$1'] or ['none']" | tr -d "[]'"; }
actl() { "$BUILD/daemon/sporectl" --agent "$SITE/$1/run/control.sock" "${@:2}"; }
knows_peer() { # knows_peer H PEER: H's agent has PEER from the manager, connected
    actl "$1" --json agent-peer-list | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if any(p["name"] == sys.argv[1] and p["connected"] for p in r["peers"]) else 1)' "$2"
}
running() { [ "$(ctl --json service-show "$1" 2>/dev/null | jget 'r["service"]["running"]')" = 1 ]; }

check "spored starts" site_manager_start
for h in hv1 hv2 hv3; do
    site_host_key "$h" >"$SITE/hosts.d/$h.pub"
    site_agent_start "$h"
done
for h in hv1 hv2 hv3; do check "$h is up" wait_until 40 eval '[ "$(host_state '"$h"')" = up ]'; done
check "hv1 has hv2 as a peer, from the manager, connected" wait_until 40 knows_peer hv1 hv2
check "hv2 has hv1 as a peer, from the manager, connected" wait_until 40 knows_peer hv2 hv1
check "image-add indexes the image from the origin" \
    quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"
hex=$(ctl --json image-list | jget 'r["images"][0]["id"]' | sed 's/^sha256://')

manifest() { # manifest NAME HOST
    cat <<EOF
<service xmlns="urn:spore:manifest:1" name="$1">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet"/>
  </vm>
  <customize><hostname>{service}-{index}</hostname></customize>
  <scaling min="1" max="1"/>
  <placement><host>$2</host></placement>
</service>
EOF
}

# --- host A (hv1) boots the image first
manifest a hv1 >"$SITE/a.xml"
check "service a runs on hv1" \
    quiet timeout 600 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" submit --wait "$SITE/a.xml"
check "a-0 boots with its own hostname" \
    wait_until 240 grep -qa "spore-guest: hostname=a-0" "$SITE/hv1/console/a-0.log"
sleep 2 # the guest settles; hv1's last chunks are stored
flush_origin_log
from=$((log_count + 1))
chunks_since 1 | sort -u >"$SITE/a-chunks.txt"
a_cached=$(actl hv1 --json agent-image-show "$hex" | jget 'r["image"]["cached_chunks"]')
echo "# hv1 holds $a_cached chunks after a-0's boot and customization"

db() { sqlite3 -cmd '.timeout 5000' "$SITE/manager/spored.db" "$@"; }
check "hv1 sends the manager the access profile of a-0's boot" \
    wait_until 60 eval '[ "$(db "SELECT boots FROM profiles WHERE host = '"'hv1'"'")" -ge 1 ]'

# --- host B (hv2) boots the same image: from hv1, and only what hv1 lacks
# from the origin; never having booted it, it prefetches the site's profile
manifest b hv2 >"$SITE/b.xml"
check "service b runs on hv2" \
    quiet timeout 600 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" submit --wait "$SITE/b.xml"
check "b-0 boots with its own hostname" \
    wait_until 240 grep -qa "spore-guest: hostname=b-0" "$SITE/hv2/console/b-0.log"
sleep 2
flush_origin_log
chunks_since "$from" >"$SITE/b-chunks.txt"
peer_bytes=$(actl hv2 --json agent-image-show "$hex" | jget 'r["image"]["fetched_bytes"]["peer"]')
echo "# while b booted: $(wc -l <"$SITE/b-chunks.txt") chunks from the origin, $peer_bytes bytes from hv1"
check "hv2 took chunks from hv1 ($peer_bytes bytes)" test "${peer_bytes:-0}" -gt 0
check "hv2 prefetched the site's profile of the image (from hv1's boot)" \
    grep -q "image ${hex:0:12}: prefetching the [1-9][0-9]* chunks of the site's profile" "$SITE/hv2.log"
check "b's create named the site's profile without its chunks (profile-get instead)" \
    test "$(db "SELECT count(*) FROM commands WHERE op='clone-create' AND body LIKE '%\"profile\":%'")" = 0 -a \
         "$(db "SELECT count(*) FROM commands WHERE op='clone-create' AND body LIKE '%\"profile_id\":\"sha256:%'")" -ge 1
check "hv2 asked the manager for the profile, once" \
    test "$(grep -c "asking the site manager for its access profile" "$SITE/hv2.log")" = 1
check "hv1, which booted the image, did not" \
    test "$(grep -c "asking the site manager for its access profile" "$SITE/hv1.log")" = 0
check "the origin was asked only for chunks hv1 lacked" \
    test -z "$(comm -12 "$SITE/a-chunks.txt" <(sort -u "$SITE/b-chunks.txt"))"
check "and for each of them once" \
    test "$(sort -u "$SITE/b-chunks.txt" | wc -l)" = "$(wc -l <"$SITE/b-chunks.txt")"
check "hv1 counts what it served hv2" \
    test "$(actl hv1 --json agent-peer-list | jget 'sum(p["bytes_out"] for p in r["peers"])')" -gt 0
check "no chunk from a peer was rejected" \
    test "$(actl hv2 --json agent-image-show "$hex" | jget 'r["image"]["rejected_chunks"]')" = 0

# --- a peer killed mid-transfer: hv3 knows hv1's bitmap (hv2 is stopped,
# so hv1 is the only peer to ask); hv1 stops answering, hv3 is given a
# clone to boot, and hv1 is killed while hv3's requests to it are out
outstanding_to() { # outstanding_to H PEER: requests from H in flight to PEER
    actl "$1" --json agent-peer-list |
        jget "sum(p['outstanding'] for p in r['peers'] if p['name'] == '$2')"
}
kill -STOP "$(cat "$SITE/hv2.pid")"
"$BUILD/daemon/sporectl" image-index -o "$SITE/disk.idx" "$SITE/www/disk.raw" >/dev/null 2>&1
quiet actl hv3 agent-image-add "$SITE/disk.idx" "http://127.0.0.1:$port/disk.raw"
# hv3 has hv1's bitmap (its plan takes chunks from hv1); hv2's never comes
plan_from() { # plan_from H PEER: bytes H's plan of the image takes from PEER
    actl "$1" --json image-plan "$hex" | jget "r.get('peers', {}).get('$2', 0)"
}
check "hv3 knows what hv1 holds (its plan takes chunks from hv1)" \
    wait_until 80 eval '[ "$(plan_from hv3 hv1)" -gt 0 ]'
kill -STOP "$(cat "$SITE/hv1.pid")"
manifest c hv3 >"$SITE/c.xml"
quiet ctl submit "$SITE/c.xml"
# requests to the stopped hv1 are out until their deadline (>= 1.5 s),
# then logged as missed: either shows that hv3 asked it
check "hv3 asks the stopped hv1 for chunks" \
    wait_until 120 eval '[ "$(outstanding_to hv3 hv1)" -gt 0 ] ||
        grep -q "peer hv1: missed a deadline for image ${hex:0:12}" "$SITE/hv3.log"'
out=$(outstanding_to hv3 hv1)
kill -9 "$(cat "$SITE/hv1.pid")"
echo "# killed hv1 with $out requests from hv3 outstanding"
kill -CONT "$(cat "$SITE/hv2.pid")"
# hv3's requests to the stopped hv1 end one of two ways, both a re-plan:
# their deadline passes first (a miss: hv1 is not asked for the image for
# a while), or the kill ends the connection while they are still out
check "hv3 plans them again, elsewhere (hv1 missed its deadline, disconnected, or silent too long)" \
    wait_until 20 grep -q "peer hv1: \(missed a deadline for image ${hex:0:12}\|\(disconnected\|no answer\); its [1-9][0-9]* outstanding requests go elsewhere\)" "$SITE/hv3.log"
check "c-0 boots with its own hostname" \
    wait_until 240 grep -qa "spore-guest: hostname=c-0" "$SITE/hv3/console/c-0.log"
uri3=$(actl hv3 agent-image-serve "$hex")
check "qemu-img compare: hv3's export equals the image" \
    qemu-img compare -q -f raw -F raw "$SITE/www/disk.raw" "$uri3"

# --- every chunk in the caches verifies (restart with --verify-cache)
for h in hv1 hv2 hv3; do
    site_agent_kill "$h"
    "$BUILD/daemon/spore-agent" --state-dir "$SITE/$h/state" --run-dir "$SITE/$h/run" \
        --plugin "$BUILD/p2p/shim/nbdkit-spore-plugin.so" --verify-cache \
        --metrics none >>"$SITE/$h-verify.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    check "$h: every cached chunk verifies" \
        wait_until 60 grep -q "image ${hex:0:12}: verified [0-9]* cached chunks, 0 bad" "$SITE/$h-verify.log"
    kill "$pid"
    wait "$pid" 2>/dev/null
done
finish
