#!/bin/bash
# test-peers.sh SPORECTL SPORE_AGENT PLUGIN: several spore-agents on this
# machine, each its own host (own state and run directories, peer port and
# CURVE keys), with static peer lists and a real HTTP origin (lighttpd on
# loopback, whose access log records each Range asked).  TAP output.
#
#  - host B reads an image host A half holds: what A holds comes from A, and
#    the origin is asked only for chunks A lacked, each once;
#  - the export B serves is identical to the image (qemu-img compare) and
#    every chunk in B's cache verifies;
#  - a peer killed (-9) mid-transfer: the reads complete from elsewhere,
#    identical; a peer that stops answering (SIGSTOP) is found dead;
#  - a host whose key its peers do not list gets nothing from them;
#  - image-plan and image-similarity tell the plan and the redundancy.
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3
work=$(mktemp -d /tmp/spore-peers.XXXXXX)
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
    for p in $(cat "$work"/*/run/shims/*.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
    sleep 0.2
    [ -n "${SPORE_KEEP_TEST:-}" ] && echo "# kept $work" || rm -rf "$work"
}
trap cleanup EXIT

[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd not installed"
command -v nbdkit >/dev/null || skip_all "nbdkit not installed"
command -v qemu-img >/dev/null || skip_all "qemu-img not installed"
command -v qemu-io >/dev/null || skip_all "qemu-io not installed"

# --- an image of 96 MiB: random data with a zero run in the middle
mkdir -p "$work/www"
head -c $((64 * 1024 * 1024)) /dev/urandom >"$work/www/image.raw"
truncate -s $((80 * 1024 * 1024)) "$work/www/image.raw"
head -c $((16 * 1024 * 1024)) /dev/urandom >>"$work/www/image.raw"
"$sporectl" image-index -o "$work/image.idx" "$work/www/image.raw" >"$work/id" 2>/dev/null
hex=$(sed 's/^sha256://' "$work/id")
port=$(free_port)
check "the origin (lighttpd) starts on 127.0.0.1:$port" \
    start_origin "$work/www" "$port" "$work" "$RANGE_LOG_FORMAT"
url="http://127.0.0.1:$port/image.raw"

# host H: state in $work/H, peers on port peer_port[H]
declare -A peer_port agent_pid
ctl() { "$sporectl" --agent "$work/$1/run/control.sock" "${@:2}"; }
start_agent() { # start_agent H [ARGS...]
    local h=$1
    shift
    mkdir -p "$work/$h/state" "$work/$h/run"
    [ -n "${peer_port[$h]:-}" ] || peer_port[$h]=$(free_port)
    [ -f "$work/$h/agent.conf" ] || printf '[agent]\n' >"$work/$h/agent.conf"
    "$agent_bin" --config "$work/$h/agent.conf" --state-dir "$work/$h/state" \
        --run-dir "$work/$h/run" --plugin "$plugin" --shim-group "" \
        --shim-timeout 20 --metrics none --host-name "$h" \
        --peer-listen "tcp://127.0.0.1:${peer_port[$h]}" "$@" \
        >>"$work/$h/agent.log" 2>&1 &
    agent_pid[$h]=$!
    pids+=("$!")
    for _ in $(seq 200); do
        kill -0 "${agent_pid[$h]}" 2>/dev/null || return 1
        quiet ctl "$h" agent-image-list && return 0
        sleep 0.05
    done
    return 1
}
# peers_of H PEER...: H's static peer list, applied with SIGHUP
peers_of() {
    local h=$1 p
    shift
    {
        printf '[agent]\n[peers]\ndead_ms = 1000\nhedge_ms = 200\n'
        for p in "$@"; do
            printf '[peer %s]\nendpoint = tcp://127.0.0.1:%s\nkey_file = %s\n' \
                "$p" "${peer_port[$p]}" "$work/$p/state/curve.pub"
        done
    } >"$work/$h/agent.conf"
    kill -HUP "${agent_pid[$h]}"
}
connected() { # connected H PEER
    ctl "$1" --json agent-peer-list | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if any(p["name"] == sys.argv[1] and p["connected"] for p in r["peers"]) else 1)' "$2"
}
image_field() { # image_field H PYTHON-EXPR on the image object "im"
    ctl "$1" --json agent-image-show "$hex" |
        python3 -c "import json,sys; im=json.load(sys.stdin)['image']; print($2)"
}
flush_origin_log() { restart_origin "$work/www" "$port" "$work"; }
origin_chunks() { range_chunks "$work/access.log" "$1"; }

for h in A B C; do check "agent $h starts with a peer server" start_agent "$h"; done
for h in A B C; do
    check "$h takes the image" quiet ctl "$h" agent-image-add "$work/image.idx" "$url"
done
check "each host made its CURVE key pair" \
    test -s "$work/A/state/curve.pub" -a -s "$work/B/state/curve.pub" -a -s "$work/C/state/curve.pub"

# --- A holds the first 32 MiB
uri_a=$(ctl A agent-image-serve "$hex")
quiet qemu-io -f raw -r -c "read 0 32M" "$uri_a"
check "A caches the first 32 MiB (512 chunks)" test "$(image_field A "im['cached_chunks']")" = 512

# --- B and A list each other; C lists A, but A does not list C
peers_of A B
peers_of B A
peers_of C A
check "B connects to A" wait_until 20 connected B A
check "A connects to B" wait_until 20 connected A B
sleep 1 # the bitmaps

ctl B image-plan "$hex" >"$work/plan.txt"
sed 's/^/# /' "$work/plan.txt"
check "image-plan: B would take A's 32 MiB from A" \
    grep -Eq '^    A +32\.0.{1,2}MiB' "$work/plan.txt"
check "image-plan: the zero run is never fetched" grep -Eq 'zero \(never fetched\) +16\.0.{1,2}MiB' "$work/plan.txt"

flush_origin_log
from=$((log_count + 1))
uri_b=$(ctl B agent-image-serve "$hex")
check "qemu-img compare: B's export equals the image" \
    qemu-img compare -q -f raw -F raw "$work/www/image.raw" "$uri_b"
flush_origin_log
origin_chunks "$from" >"$work/b-origin.txt"
echo "# the origin was asked for $(wc -l <"$work/b-origin.txt") chunks while B read the image"
check "the origin was asked only for chunks A lacked (none below 512)" \
    test "$(head -1 "$work/b-origin.txt")" -ge 512
check "and for each of them once" \
    test "$(sort -u "$work/b-origin.txt" | wc -l)" = "$(wc -l <"$work/b-origin.txt")"
check "and for every non-zero chunk A lacked (1024 - 512 = 512 plus 256 after the zeros)" \
    test "$(wc -l <"$work/b-origin.txt")" = 768
peer_b=$(image_field B "im['fetched_bytes']['peer']")
check "B took at least A's 32 MiB from A ($peer_b bytes)" test "$peer_b" -ge $((32 * 1024 * 1024))
check "C, whose key A does not list, is refused by A" \
    wait_until 20 grep -q "refused a peer from .*not in the peer list" "$work/A/agent.log"
check "and C never connects to A" eval '! connected C A'

# --- background fill, rarest first: chunks no peer holds come first
mkdir -p "$work/E"
check "agent E starts" start_agent E
quiet ctl E agent-image-add "$work/image.idx" "$url"
peers_of E A
peers_of A B E
check "E connects to A" wait_until 20 connected E A
sleep 1
a_has=$(image_field A "im['cached_chunks']")
quiet ctl E agent-image-fill "$hex"
check "E fills rarest first: the $((1280 - a_has)) chunks A lacks are held by no peer" \
    wait_until 10 grep -q "filling 1280 missing chunks in the background, rarest first ($((1280 - a_has)) held by no peer)" "$work/E/agent.log"
check "and the fill completes" \
    wait_until 120 eval '[ "$(image_field E "im[\"cached_chunks\"]")" = 1280 ]'
echo "# E: $(ctl E agent-image-show "$hex")"

# --- A peer killed mid-transfer: C lists B (B lists C) and B is killed
# while C reads; the reads complete from elsewhere, identical
peers_of B A C
peers_of C B
check "C connects to B" wait_until 20 connected C B
sleep 1
uri_c=$(ctl C agent-image-serve "$hex")
# C reads the first 16 MiB, from B; then B is stopped, C starts reading
# the rest, and B is killed -9 with whatever C asked of it unanswered.
# (Killing B once C's counters showed bytes from it raced the reader on
# a quiet machine: C had read all 80 MiB from B by then.)
check "C reads its first 16 MiB" quiet qemu-io -r -f raw -c "read 0 16M" "$uri_c"
kill -STOP "${agent_pid[B]}"
qemu-img compare -q -f raw -F raw "$work/www/image.raw" "$uri_c" >"$work/c-compare.txt" 2>&1 &
cmp_pid=$!
kill -9 "${agent_pid[B]}"
wait "$cmp_pid"
check "C's reads complete after B is killed, identical to the image" test $? = 0
c_peer=$(image_field C "im['fetched_bytes']['peer']")
c_origin=$(image_field C "im['fetched_bytes']['origin']")
echo "# C had $c_peer bytes from B, then $c_origin from the origin"
check "B was killed mid-transfer: C had part of the image from B, the rest from the origin" \
    test "$c_peer" -gt 0 -a "$c_origin" -gt 0
check "C found B gone" wait_until 20 grep -q "peer B: \(disconnected\|no answer\)" "$work/C/agent.log"
kill "${agent_pid[C]}"; wait "${agent_pid[C]}" 2>/dev/null
check "C restarts and verifies its cache" start_agent C --verify-cache
check "every chunk C cached verifies (0 bad)" \
    grep -q "image ${hex:0:12}: verified [0-9]* cached chunks, 0 bad" "$work/C/agent.log"

# --- a peer that accepts and never answers (stopped): found dead, and the
# reads go elsewhere
check "B restarts with its cache" start_agent B
check "agent D starts" start_agent D
quiet ctl D agent-image-add "$work/image.idx" "$url"
peers_of B A C D
peers_of D B
check "D connects to B" wait_until 20 connected D B
sleep 1
kill -STOP "${agent_pid[B]}"
uri_d=$(ctl D agent-image-serve "$hex")
check "D reads the whole image while its only peer B never answers" \
    qemu-img compare -q -f raw -F raw "$work/www/image.raw" "$uri_d"
check "D found B dead (no answer, or deadlines missed)" \
    grep -q "peer B: \(no answer\|missed a deadline\)" "$work/D/agent.log"
kill -CONT "${agent_pid[B]}"

# --- redundancy between images: a second image sharing its first half
head -c $((32 * 1024 * 1024)) "$work/www/image.raw" >"$work/www/image2.raw"
head -c $((8 * 1024 * 1024)) /dev/urandom >>"$work/www/image2.raw"
"$sporectl" image-index -o "$work/image2.idx" "$work/www/image2.raw" >/dev/null 2>&1
quiet ctl A agent-image-add "$work/image2.idx" "http://127.0.0.1:$port/image2.raw"
ctl A image-similarity >"$work/sim.txt"
sed 's/^/# /' "$work/sim.txt"
check "image-similarity: image2 shares 80% of its chunks with the image (512 of 640, all cached)" \
    grep -q "shares  80.0% of its chunks with sha256:${hex:0:12}.* (512 of 640, 512 cached there)" "$work/sim.txt"
finish
