#!/bin/bash
# test-peers-scale.sh BUILD-DIR: peers still exchange chunks on a site of
# more than 256 hosts (the agent's limit on a peer list: before the lists
# were bounded, a site of 257 hosts or more had no P2P at all).
#
#   spored, 300 simulated hosts (bench/site-scale/site-sim: the real site
#   protocol, each reporting that it holds the image) and two real
#   spore-agents, zz1 and zz2 (libvirtd for their reports).  zz1 reads the
#   whole image from the origin; then zz2 takes the image and, with a cold
#   cache, reads it.
#   Required: every peer list stays within the agent's limit (none
#   dropped), zz1 and zz2 are each other's peers (they hold the image),
#   and zz2's copy is identical with its chunks taken from zz1; every
#   simulated host is sent a list (a broadcast goes out in batches).  TAP
#   output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
sim=$BUILD/bench/site-scale/site-sim
hosts=300
[ -x "$sim" ] || skip_all "site-sim is not built ($sim)"
site_test_prepare peerscale
SITE_TAG=s$$
SITE_LOST_AFTER=300 # agents stalled by a loaded, shared libvirtd are not lost
site_test_start
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$SITE/www"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$SITE/www/image.raw"
"$BUILD/daemon/sporectl" image-index -o "$SITE/image.idx" "$SITE/www/image.raw" >"$SITE/id" 2>/dev/null
id=$(cat "$SITE/id")
hex=${id#sha256:}
port=$(free_port)
start_origin "$SITE/www" "$port" "$SITE" ||
    { echo "Bail out! lighttpd does not start"; exit 1; }
url=http://127.0.0.1:$port/image.raw

ctl() { sporectl_site "$@"; }
actl() { local h=$1; shift; "$BUILD/daemon/sporectl" --agent "$SITE/$h/run/control.sock" "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
hosts_up() { ctl --json host-list | jget 'sum(1 for h in r["hosts"] if h["state"] == "up")'; }
peer_field() { # peer_field HOST PEER FIELD
    actl "$1" --json agent-peer-list | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(sum(int(p[sys.argv[2]]) for p in r["peers"] if p["name"] == sys.argv[1]))' "$2" "$3"
}
peer_count() { actl "$1" --json agent-peer-list | jget 'len(r["peers"])'; }
fetched() { actl "$1" --json agent-image-show "$hex" | jget "r['image']['fetched_bytes']['$2']"; }

check "spored starts" site_manager_start
"$sim" keygen "$SITE/sim.keys" "$SITE/hosts.d" sim "$hosts"
for h in zz1 zz2; do site_host_key "$h" >"$SITE/hosts.d/$h.pub"; done
"$sim" run --endpoint "tcp://127.0.0.1:$SITE_PORT" \
    --manager-key "$(cat "$SITE/manager/curve.pub")" --keys "$SITE/sim.keys" \
    --hosts "$hosts" --clones 0 --image "$id" --timeout 1000 \
    >"$SITE/sim.out" 2>"$SITE/sim.err" &
sim_pid=$!
pids+=("$sim_pid")
site_agent_start zz1
site_agent_start zz2
check "all $((hosts + 2)) hosts are up" wait_until 240 eval '[ "$(hosts_up)" = $((hosts + 2)) ]'

check "zz1 reads the whole image from the origin" \
    eval 'quiet actl zz1 agent-image-add "$SITE/image.idx" "$url" &&
          qemu-img compare -q -f raw -F raw "$SITE/www/image.raw" "$(actl zz1 agent-image-serve "$hex")"'
# zz2 takes the image (as for a clone): its next report says so, and the
# manager's next lists put it among the image's holders
check "zz2 adds the image" quiet actl zz2 agent-image-add "$SITE/image.idx" "$url"
check "zz2 has zz1 for a peer, connected" \
    wait_until 240 eval '[ "$(peer_field zz2 zz1 connected)" = 1 ]'
n2=$(peer_count zz2)
echo "# zz2's peer list: $n2 peers of $((hosts + 1)) other hosts"
check "zz2's peer list is bounded (64), not the whole site" test "$n2" -le 64 -a "$n2" -ge 2
check "no agent dropped a peer list" \
    eval '! grep -q "dropped a peers message" "$SITE/zz1.log" "$SITE/zz2.log"'

check "zz2 reads the whole image, identical" \
    qemu-img compare -q -f raw -F raw "$SITE/www/image.raw" "$(actl zz2 agent-image-serve "$hex")"
peer=$(fetched zz2 peer) origin=$(fetched zz2 origin)
echo "# zz2 fetched $peer bytes from peers, $origin from the origin"
check "its chunks came from zz1 (peer bytes > origin bytes)" test "$peer" -gt "$origin"
check "zz1 counts what it served zz2" test "$(peer_field zz1 zz2 bytes_out)" -gt 0

kill "$sim_pid" 2>/dev/null
wait "$sim_pid" 2>/dev/null
sed 's/^/# site-sim: /' "$SITE/sim.out"
check "no simulated host was sent a peer list over the agent's limit" \
    grep -q " 0 over the agent's limit" "$SITE/sim.out"
# spored sends a broadcast 100 hosts at a time (one batch per turn of
# its main loop): every batch must go out
check "every simulated host was sent a peer list" \
    grep -q "^peer lists reached $hosts of $hosts hosts\$" "$SITE/sim.out"
finish
