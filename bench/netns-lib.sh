# bench/netns-lib.sh: a shaped network of namespaces for the benchmarks.
# Source it; then netns_switch, then netns_attach for each node.
#
# Every node is a network namespace (NETNS_PREFIX-NAME, default prefix
# "spb") with one veth to a bridge in the namespace NETNS_PREFIX-sw, its
# egress shaped by tc: netem for the delay where the kernel has it, tbf for
# the rate.  Addresses are in 10.99.0.0/24 and only ever used from inside
# the namespaces.  netns_cleanup kills what runs in them and removes them.

NETNS_PREFIX=${NETNS_PREFIX:-spb}
NETNS_NET=10.99.0
NETNS_ALL=()
netns_delays=yes

# netns_switch: the bridge every node joins
netns_switch() {
    ip netns add "$NETNS_PREFIX-sw"
    NETNS_ALL+=("$NETNS_PREFIX-sw")
    ip -n "$NETNS_PREFIX-sw" link add br0 type bridge
    ip -n "$NETNS_PREFIX-sw" link set br0 up
}

# netns_attach NAME ADDR RATE DELAY: node NAME (namespace PREFIX-NAME) at
# ADDR, its egress at RATE (tc units: 100mbit) after DELAY (5ms)
netns_attach() {
    local ns=$NETNS_PREFIX-$1 addr=$2 rate=$3 delay=$4 side=v$1
    ip netns add "$ns"
    NETNS_ALL+=("$ns")
    ip link add "$side" netns "$ns" type veth peer name "b-$side" netns "$NETNS_PREFIX-sw"
    ip -n "$NETNS_PREFIX-sw" link set "b-$side" master br0 up
    ip -n "$ns" addr add "$addr/24" dev "$side"
    ip -n "$ns" link set "$side" up
    ip -n "$ns" link set lo up
    if ip netns exec "$ns" tc qdisc add dev "$side" root handle 1: netem delay "$delay" 2>/dev/null; then
        ip netns exec "$ns" tc qdisc add dev "$side" parent 1: handle 2: tbf \
            rate "$rate" burst 64kb latency 400ms
    else
        netns_delays=no # no netem in this kernel: the rate only
        ip netns exec "$ns" tc qdisc add dev "$side" root tbf \
            rate "$rate" burst 64kb latency 400ms
    fi
}

# netns_run NAME COMMAND...: COMMAND inside node NAME
netns_run() {
    local ns=$NETNS_PREFIX-$1
    shift
    ip netns exec "$ns" "$@"
}

# netns_describe: how the links are shaped, for the benchmark's output
netns_describe() {
    if [ "$netns_delays" = yes ]; then
        echo "tc tbf rates with netem delays"
    else
        echo "tc tbf rates; no netem in this kernel, so no added delay"
    fi
}

# netns_cleanup: kill what runs in the namespaces, remove them
netns_cleanup() {
    local ns
    for ns in "${NETNS_ALL[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
    return 0
}
