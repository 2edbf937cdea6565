#!/bin/bash
# test-metrics.sh BUILD: both daemons' /metrics pages follow the Prometheus
# naming conventions.  TAP output.
#
# A spored and one spore-agent connected to it (host "hm1", its key placed
# in the hosts directory), each with --metrics on a port of the test's; the
# agent has two images added from an HTTP origin, one served and read
# through its shim, so that the per-image families (the agent's) and the
# per-host-image families (spored's, from the agent's reports) have
# samples.  Each page is checked by check-metrics.py (every family has
# HELP and TYPE, counters end in _total, a family's samples are
# contiguous) and by `promtool check metrics` when promtool is installed
# (Debian package prometheus; skipped otherwise).
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
checker="$(dirname "$0")/check-metrics.py"
SITE=$(mktemp -d /tmp/spore-metrics.XXXXXX)
SITE_TAG=metrics-$$
pids=()
. "$(dirname "$0")/../../scripts/site-lib.sh"

cleanup() {
    site_agent_kill hm1
    site_manager_kill
    for p in "${pids[@]}" $(cat "$SITE"/hm1/run/shims/*.pid 2>/dev/null); do
        kill "$p" 2>/dev/null
    done
    virsh -q -c qemu:///system pool-destroy "spore-$SITE_TAG-hm1" >/dev/null 2>&1
    virsh -q -c qemu:///system pool-undefine "spore-$SITE_TAG-hm1" >/dev/null 2>&1
    [ "$libvirt_state" = started ] && "$(dirname "$0")/../../scripts/libvirt-down"
    rm -rf "$SITE"
}
libvirt_state=""
trap cleanup EXIT

[ -x /usr/sbin/lighttpd ] || skip_all "lighttpd not installed"
command -v nbdkit >/dev/null || skip_all "nbdkit not installed"
command -v qemu-io >/dev/null || skip_all "qemu-io not installed"
command -v curl >/dev/null || skip_all "curl not installed"
[ -x /usr/sbin/libvirtd ] || skip_all "libvirtd is not installed"
# the agent reports only what it can list: libvirtd must answer (a
# fresh machine has none running; CI's test failed without it)
libvirt_state=$("$(dirname "$0")/../../scripts/libvirt-up") ||
    { echo "Bail out! libvirtd does not start"; exit 1; }

# --- two images of random data (two rows of each per-image family, so
# that interleaved families would show), served by an HTTP origin
mkdir -p "$SITE/www"
for x in m n; do
    head -c $((4 * 1024 * 1024)) /dev/urandom >"$SITE/www/$x.raw"
    "$BUILD/daemon/sporectl" image-index -o "$SITE/$x.idx" "$SITE/www/$x.raw" \
        >"$SITE/$x.id" 2>/dev/null
done
hex=$(cut -d: -f2 "$SITE/m.id")
port=$(free_port)
check "the origin (lighttpd) starts on 127.0.0.1:$port" \
    start_origin "$SITE/www" "$port" "$SITE"

# --- spored (its metrics on SITE_PORT + 2) and an agent connected to it
check "spored starts" site_manager_start
manager_metrics="127.0.0.1:$((SITE_PORT + 2))"
agent_metrics="127.0.0.1:$(free_port)"
site_host_key hm1 >"$SITE/hosts.d/hm1.pub"
mkdir -p "$SITE/hm1/run" "$SITE/hm1/console"
# its own report interval differs from the site's (the manager's welcome
# says 2000 ms): the agent follows the manager
printf '[agent]\nreport_ms=700\n' >"$SITE/hm1.conf"
"$BUILD/daemon/spore-agent" --config "$SITE/hm1.conf" --state-dir "$SITE/hm1/state" \
    --run-dir "$SITE/hm1/run" \
    --plugin "$BUILD/p2p/shim/nbdkit-spore-plugin.so" \
    --manager "tcp://127.0.0.1:$SITE_PORT" \
    --manager-key-file "$SITE/manager/curve.pub" --host-name hm1 \
    --pool "spore-$SITE_TAG-hm1" --pool-dir "$SITE/hm1/pool" \
    --console-dir "$SITE/hm1/console" --shim-group "" \
    --metrics "$agent_metrics" >>"$SITE/hm1.log" 2>&1 &
echo $! >"$SITE/hm1.pid"

ctl() { sporectl_site "$@"; }
actl() { "$BUILD/daemon/sporectl" --agent "$SITE/hm1/run/control.sock" "$@"; }
host_up() {
    ctl --json host-list 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if any(h["name"] == "hm1" and h["state"] == "up" for h in r["hosts"]) else 1)'
}
fetch() { curl -sf "http://$1/metrics" >"$2"; }
has_sample() { # has_sample FILE FAMILY: a sample line of FAMILY in FILE
    grep -q "^$2[{ ]" "$1"
}

check "hm1 is up" wait_until 60 host_up
check "the agent follows the report interval of the manager's welcome (2000 ms, not its own 700)" \
    wait_until 20 grep -q "the site manager asks for a report every 2000 ms" "$SITE/hm1.log"
for x in m n; do
    check "the agent adds image $x from the origin" \
        quiet actl agent-image-add "$SITE/$x.idx" "http://127.0.0.1:$port/$x.raw"
done
uri=$(actl agent-image-serve "$hex" 2>>"$SITE/hm1.log")
check "the agent serves image m" test -n "$uri"
check "a 64 KiB read through the image's shim succeeds" \
    quiet qemu-io -r -f raw -c 'read 0 64k' "$uri"

# spored learns the host's images from its reports
ratios() { # ratios: spored's page has both images' spore_cached_ratio
    fetch "$manager_metrics" "$SITE/spored.metrics" &&
        [ "$(grep -c '^spore_cached_ratio{host="hm1"' "$SITE/spored.metrics")" = 2 ]
}
check "spored's page has both images' spore_cached_ratio (from hm1's report)" \
    wait_until 60 ratios
origin_bytes() { # spored's page has hm1's origin bytes of the read
    fetch "$manager_metrics" "$SITE/spored.metrics" &&
        grep -q '^spore_fetched_bytes_total{host="hm1",.*source="origin"} [1-9]' \
            "$SITE/spored.metrics"
}
check "spored's spore_fetched_bytes_total has hm1's origin bytes" \
    wait_until 60 origin_bytes
check "the agent's page has a spore_agent_cached_chunks sample" \
    eval 'fetch "$agent_metrics" "$SITE/agent.metrics" &&
        has_sample "$SITE/agent.metrics" spore_agent_cached_chunks'

for who in spored agent; do
    page="$SITE/$who.metrics"
    if python3 "$checker" "$page" >"$SITE/$who.problems" 2>&1; then
        ok "$who: every family has HELP and TYPE, counters end in _total, samples contiguous"
    else
        not_ok "$who: the page breaks the naming conventions"
        sed 's/^/# /' "$SITE/$who.problems"
    fi
    if command -v promtool >/dev/null; then
        if promtool check metrics <"$page" >"$SITE/$who.promtool" 2>&1; then
            ok "$who: promtool check metrics finds nothing"
        else
            not_ok "$who: promtool check metrics"
            sed 's/^/# /' "$SITE/$who.promtool"
        fi
    else
        ok "$who: promtool check metrics # SKIP promtool not installed"
    fi
done

check "spored's page has spore_host_up 1 and spore_host_clones_placed 0 for hm1" \
    eval 'grep -q "^spore_host_up{host=\"hm1\"} 1$" "$SITE/spored.metrics" &&
        grep -q "^spore_host_clones_placed{host=\"hm1\"} 0$" "$SITE/spored.metrics"'
check "spored's page has the per-service families (HELP and TYPE)" \
    eval 'grep -q "^# TYPE spore_service_clones_desired gauge" "$SITE/spored.metrics" &&
        grep -q "^# TYPE spore_service_clones_running gauge" "$SITE/spored.metrics"'
# the Grafana dashboard spore ships asks only for exported metrics
if python3 "$(dirname "$0")/check-dashboard.py" "$(dirname "$0")/../../data/grafana/spore-site.json" \
    "$SITE/spored.metrics" "$SITE/agent.metrics" >"$SITE/dashboard.problems" 2>&1; then
    ok "data/grafana/spore-site.json: every panel's query names exported metrics"
else
    not_ok "data/grafana/spore-site.json: queries name metrics nobody exports"
    sed 's/^/# /' "$SITE/dashboard.problems"
fi

if [ "$failed" -ne 0 ]; then
    for f in spored.log hm1.log spored.metrics agent.metrics; do
        echo "# --- $f"
        tail -40 "$SITE/$f" 2>/dev/null | sed 's/^/# /'
    done
fi
finish
