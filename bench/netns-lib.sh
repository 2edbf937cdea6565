# bench/netns-lib.sh: a shaped network of namespaces for the benchmarks.
# Source it; then netns_switch, then netns_attach for each node; print
# netns_describe, and netns_check_rtt between two nodes; netns_cleanup at
# the end (in a trap).
#
# Every node is a network namespace (NETNS_PREFIX-NAME, default prefix
# "spb") with one link to a bridge in the namespace NETNS_PREFIX-sw.
# A link has a RATE (tc tbf on the node's egress) and a DELAY: the link's
# one-way delay, added in each direction, so a round trip between nodes A
# and B costs 2 x (DELAY(A) + DELAY(B)) (20 ms to an origin at 9.75ms from
# a host at 0.25ms; 1 ms between two hosts at 0.25ms).  The delay comes
# from one of two methods (NETNS_DELAY_METHOD=auto, the default, picks the
# first that works; "none" drops the delays):
#   netem               a veth pair, tc netem on both ends (the node's end
#                       netem then tbf), where the kernel has sch_netem;
#   netdelay TAP relay  a TAP device in the node and one on the bridge,
#                       joined by bench/netdelay (compiled here with cc),
#                       which delays each frame by DELAY in each direction;
#                       tbf on the node's TAP.  ICMP is delayed as well.
# A link without a delay (0 or "") is a plain veth with tbf.  Addresses are
# in 10.99.0.0/24 and only ever used from inside the namespaces.
# netns_cleanup stops the relays (by PID), kills what runs in the
# namespaces and removes them.

NETNS_PREFIX=${NETNS_PREFIX:-spb}
NETNS_NET=10.99.0
NETNS_ALL=()
NETNS_DELAY_METHOD=${NETNS_DELAY_METHOD:-auto}
netns_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
netns_tmp=
netns_method=
netns_relays=()
declare -A netns_addr=() netns_delay=() netns_rate=()

# netns_delay_us DELAY: tc's delay units (5ms, 250us, 0.25ms, 1s; a bare
# number is microseconds) in microseconds
netns_delay_us() {
    awk -v d="$1" 'BEGIN {
        if (d == "") { print 0; exit }
        if (!match(d, /^[0-9]*\.?[0-9]+/)) { exit 1 }
        v = substr(d, 1, RLENGTH); u = substr(d, RLENGTH + 1)
        if (u == "s" || u == "sec") m = 1e6
        else if (u == "ms" || u == "msec") m = 1e3
        else if (u == "us" || u == "usec" || u == "") m = 1
        else exit 1
        printf "%d\n", v * m + 0.5 }'
}

# netns_switch: the bridge every node joins
netns_switch() {
    ip netns add "$NETNS_PREFIX-sw"
    NETNS_ALL+=("$NETNS_PREFIX-sw")
    ip -n "$NETNS_PREFIX-sw" link add br0 type bridge
    ip -n "$NETNS_PREFIX-sw" link set br0 up
    netns_tmp=$(mktemp -d /var/tmp/spore-netns.XXXXXX)
}

# netns_pick_method: netem where the kernel has it, else the relay
netns_pick_method() {
    [ -z "$netns_method" ] || return 0
    case $NETNS_DELAY_METHOD in
    netem | netdelay | none) netns_method=$NETNS_DELAY_METHOD ;;
    auto)
        if ip netns exec "$NETNS_PREFIX-sw" tc qdisc add dev lo root netem \
            delay 1ms 2>/dev/null; then
            ip netns exec "$NETNS_PREFIX-sw" tc qdisc del dev lo root
            netns_method=netem
        else
            netns_method=netdelay
        fi
        ;;
    *)
        echo "netns-lib: NETNS_DELAY_METHOD must be auto, netem," \
            "netdelay or none, not '$NETNS_DELAY_METHOD'" >&2
        return 1
        ;;
    esac
    if [ "$netns_method" = netdelay ] && [ ! -x "$netns_tmp/netdelay" ]; then
        ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -Werror \
            -o "$netns_tmp/netdelay" "$netns_lib_dir/netdelay.c" ||
            { echo "netns-lib: cannot build bench/netdelay.c" >&2; return 1; }
    fi
}

# netns_attach NAME ADDR RATE DELAY: node NAME (namespace PREFIX-NAME) at
# ADDR, its egress at RATE (tc units: 100mbit), its link's one-way delay
# DELAY (5ms, 0.25ms; 0 or "" for none) in each direction
netns_attach() {
    local ns=$NETNS_PREFIX-$1 addr=$2 rate=$3 delay=${4:-0} side=v$1
    local sw=$NETNS_PREFIX-sw us
    us=$(netns_delay_us "$delay") ||
        { echo "netns-lib: bad delay '$delay' for $1" >&2; return 1; }
    ip netns add "$ns"
    NETNS_ALL+=("$ns")
    if [ "$us" -gt 0 ]; then
        netns_pick_method || return 1
        [ "$netns_method" != none ] || us=0
    fi
    netns_addr[$1]=$addr
    netns_delay[$1]=$us
    netns_rate[$1]=$rate
    if [ "$us" -gt 0 ] && [ "$netns_method" = netdelay ]; then
        # the relay does what a veth pair does in a softirq (the frame's
        # way through the receiving stack), which no nice slows down: run
        # it at NETNS_RELAY_NICE (default 0) whatever the caller's
        # niceness, or a busy machine stretches the delays; its CPU is
        # bounded by the link's rate (netns-check measures it)
        nice -n "$((${NETNS_RELAY_NICE:-0} - $(nice)))" \
            "$netns_tmp/netdelay" --pidfile "$netns_tmp/$1.pid" \
            "$ns" "$side" "$sw" "b-$side" "$delay" 2>>"$netns_tmp/$1.log" ||
            { cat "$netns_tmp/$1.log" >&2; return 1; }
        netns_relays+=("$(cat "$netns_tmp/$1.pid")")
    else
        ip link add "$side" netns "$ns" type veth peer name "b-$side" netns "$sw"
    fi
    ip -n "$sw" link set "b-$side" master br0 up
    ip -n "$ns" addr add "$addr/24" dev "$side"
    ip -n "$ns" link set "$side" up
    ip -n "$ns" link set lo up
    if [ "$us" -gt 0 ] && [ "$netns_method" = netem ]; then
        ip netns exec "$ns" tc qdisc add dev "$side" root handle 1: netem delay "$delay"
        ip netns exec "$ns" tc qdisc add dev "$side" parent 1: handle 2: tbf \
            rate "$rate" burst 64kb latency 400ms
        ip netns exec "$sw" tc qdisc add dev "b-$side" root netem delay "$delay"
    else
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
    case $netns_method in
    netem) echo "tc tbf rates, delays by netem (one-way delay each direction)" ;;
    netdelay) echo "tc tbf rates, delays by the netdelay TAP relay (one-way delay each direction)" ;;
    none) echo "tc tbf rates, no delays (NETNS_DELAY_METHOD=none)" ;;
    *) echo "tc tbf rates, no delays" ;;
    esac
}

# netns_link NAME: node NAME's link as configured, for the output
netns_link() {
    if [ "${netns_delay[$1]}" -gt 0 ]; then
        echo "${netns_rate[$1]}, one-way delay $(awk -v u="${netns_delay[$1]}" \
            'BEGIN { printf "%g", u / 1000 }') ms"
    else
        echo "${netns_rate[$1]}, no delay"
    fi
}

# netns_expected_rtt_ms A B: the configured round trip between nodes A, B
netns_expected_rtt_ms() {
    awk -v a="${netns_delay[$1]}" -v b="${netns_delay[$2]}" \
        'BEGIN { printf "%.3f\n", 2 * (a + b) / 1000 }'
}

# netns_check_rtt A B: ping B from A (one echo to warm the neighbour
# tables, then 5 echoes, 0.2 s apart) and print the
# configured round trip beside the measured min/avg/max; fails when the
# measured minimum is below the configured round trip (the delay is not
# there) or nothing came back
netns_check_rtt() {
    local want out stats ping=(ping)
    want=$(netns_expected_rtt_ms "$1" "$2")
    command -v ping >/dev/null || ping=(busybox ping)
    # one echo first: the neighbours' addresses (ARP crosses the links
    # too, a round trip of its own) should not land in the figures
    netns_run "$1" "${ping[@]}" -c 1 -W 5 "${netns_addr[$2]}" >/dev/null 2>&1 || true
    out=$(netns_run "$1" "${ping[@]}" -c 5 -i 0.2 -W 5 "${netns_addr[$2]}" 2>&1) || true
    stats=$(sed -n 's|.*min/avg/max[^=]*= *\([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\).*|\1 \2 \3|p' <<<"$out")
    if [ -z "$stats" ]; then
        echo "rtt $1 -> $2: configured $want ms, measured: no reply" \
            "($(tail -n 1 <<<"$out"))"
        return 1
    fi
    set -- "$1" "$2" $stats
    echo "rtt $1 -> $2: configured $want ms, measured min/avg/max" \
        "$3/$4/$5 ms (ping -c 5)"
    awk -v m="$3" -v w="$want" 'BEGIN { exit !(m >= w) }'
}

# netns_cleanup: stop the relays, kill what runs in the namespaces, remove
# them; prints a relay's drops, if any.  Safe under set -e (for traps).
netns_cleanup() {
    local ns p i log
    for p in "${netns_relays[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${netns_relays[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
    done
    netns_relays=()
    for log in "$netns_tmp"/*.log; do
        [ -f "$log" ] || continue
        awk -v n="$(basename "$log" .log)" '$4 == "forwarded" &&
            ($7 + $9 > 0) { print "netdelay " n ": " $0 > "/dev/stderr" }' \
            "$log" || true
    done
    for ns in "${NETNS_ALL[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    NETNS_ALL=()
    [ -z "$netns_tmp" ] || rm -rf "$netns_tmp"
    netns_tmp=
    return 0
}
