#!/bin/bash
# test-fault-matrix.sh SPORECTL SPORE_AGENT PLUGIN BAD_PEER: the lazy data
# path against each misbehaving peer, one round each (fault-lib.sh): a
# reader host R with a cold cache lists an honest host A, which holds the
# whole image, and a bad peer B (bad-peer.c) that claims every chunk; R's
# export is read whole (qemu-img compare).  TAP output.  Per fault:
#   - the copy is identical to the image and the reader saw no I/O error
#     (qemu-img compare exits 0) and the shim gave up on no chunk;
#   - what R received from B is bounded: at most 1.1 x the useful bytes it
#     took from B plus one window (16 chunks of 64 KiB);
#   - liars (wrong bytes, short DATA) are banned for the image; DATA
#     larger than asked or unasked is a strike and drops the connection,
#     with a log line; peers that never answer (silent, delegated work
#     never done) miss their deadlines; a slow honest peer is not banned;
#   - every chunk R cached verifies.
# The time each fault costs is measured by bench/fault-matrix, not here.
# The other faults of the data path have their own tests: a killed agent
# (test-agent-restart.sh), killed shims (test-lazy-export.sh,
# test-agent-shims.sh), a peer killed or stopped mid-transfer
# (test-peers.sh, test-peer-boot.sh), an origin that fails
# (test-lazy-export.sh).
set -u
. "$(dirname "$0")/lib.sh"
sporectl=$1 agent_bin=$2 plugin=$3 bad_peer=$4
work=$(mktemp -d /tmp/spore-faults.XXXXXX)
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in $(cat "$work"/*/run/shims/*.pid 2>/dev/null); do kill "$p" 2>/dev/null; done
    sleep 0.2
    [ -n "${SPORE_KEEP_TEST:-}" ] && echo "# kept $work" || rm -rf "$work"
}
trap cleanup EXIT

[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd not installed"
command -v nbdkit >/dev/null || skip_all "nbdkit not installed"
command -v qemu-img >/dev/null || skip_all "qemu-img not installed"
. "$(dirname "$0")/fault-lib.sh"

check "host A holds the whole 16 MiB image (read through its shim, identical)" fm_setup 16
window=$((16 * 65536))

for mode in liar half plus4k 4mib unasked silent nofetch slow; do
    if ! fm_round "$mode"; then
        not_ok "$mode: the round runs (see $work/R-$mode)"
        continue
    fi
    echo "# $mode: ${fm_ms} ms; from B: ${fm_b_in} bytes received (B sent $fm_b_sent)," \
        "$fm_from_b useful; bad $fm_b_bad, banned $fm_b_banned, missed $fm_b_missed"
    check "$mode: R's export equals the image, no I/O error" test "$fm_rc" = 0
    check "$mode: the shim gave up on no chunk" test "$fm_unavail" = 0
    check "$mode: every chunk R cached verifies" test "$fm_verified" = yes
    check "$mode: bytes from B ($fm_b_in) <= 1.1 x useful ($fm_from_b) + one window" \
        test "$fm_b_in" -le $((fm_from_b * 11 / 10 + window))
    case $mode in
    liar | half)
        check "$mode: B is banned for the image" test "$fm_b_banned" -ge 1
        check "$mode: nothing useful came from B" test "$fm_from_b" = 0 ;;
    plus4k | 4mib | unasked)
        # more than asked, or unasked: a strike, and the connection drops
        check "$mode: each of B's oversized or unasked DATA is a strike" test "$fm_b_bad" -ge 1
        check "$mode: R dropped B's connection, with a log line" \
            grep -q "peer B: .*\(dropped the connection\|larger than asked\|nobody asked for\)" "$work/R-$mode/agent.log"
        check "$mode: nothing useful came from B" test "$fm_from_b" = 0 ;;
    silent | nofetch)
        check "$mode: B missed deadlines" test "$fm_b_missed" -ge 1
        check "$mode: nothing useful came from B" test "$fm_from_b" = 0 ;;
    slow)
        check "$mode: the slow, honest B is not banned" test "$fm_b_banned" = 0
        check "$mode: and never sent a bad chunk" test "$fm_b_bad" = 0 ;;
    esac
done
finish
