#!/bin/bash
# test-netdelay.sh SOURCE-ROOT: the benchmarks' delaying relay
# (bench/netdelay.c through bench/netns-lib.sh) really delays: a node
# behind a link of 10 ms one-way delay, pinged from a node without delay
# inside the namespaces, answers no sooner than 20 ms (a lower bound only);
# and netns_cleanup leaves no relay and no namespace behind.  Needs root,
# /dev/net/tun, ip, tc and cc; the namespaces are its own (tnd<PID>-*).
set -u
. "$(dirname "$0")/lib.sh"
root=$1
[ "$(id -u)" -eq 0 ] || skip_all "needs root (network namespaces, TAP devices)"
[ -c /dev/net/tun ] || skip_all "no /dev/net/tun"
for t in ip tc cc; do
    command -v "$t" >/dev/null || skip_all "$t is not installed"
done
command -v ping >/dev/null || command -v busybox >/dev/null ||
    skip_all "no ping (iputils-ping or busybox)"

export NETNS_PREFIX=tnd$$ NETNS_DELAY_METHOD=netdelay
. "$root/bench/netns-lib.sh"
trap netns_cleanup EXIT

netns_switch
check "a node behind a relay with 10 ms one-way delay" \
    netns_attach a "$NETNS_NET.1" 100mbit 10ms
check "a node without delay" netns_attach b "$NETNS_NET.2" 100mbit 0
check "one relay runs" test "${#netns_relays[@]}" -eq 1
check "the method is named" eval 'netns_describe | grep -q "netdelay TAP relay"'
out=$(netns_check_rtt b a)
rc=$?
echo "# $out"
check "ping's minimum round trip is at least the configured 20 ms" test "$rc" -eq 0
check "the configured round trip is 20 ms" eval '[[ $out == *"configured 20.000 ms"* ]]'

relay=${netns_relays[0]}
netns_cleanup
check "netns_cleanup stopped the relay" eval '! kill -0 "$relay" 2>/dev/null'
check "netns_cleanup removed the namespaces" \
    eval '! ip netns list | grep -q "^$NETNS_PREFIX-"'
finish
