#!/bin/bash
# test-failover.sh BUILD-DIR: an active and a standby spored on one
# PostgreSQL state, on a real site — two spore-agents (hosts fo1, fo2:
# names no other test uses, since domains are told apart by their owner on
# the shared libvirtd), libvirtd + QEMU, nbdkit shims, a lighttpd origin,
# the busybox test guest.  PostgreSQL is the throwaway server of
# tests/pg-lib.sh (skipped without Debian's postgresql).
#
#   Manager a is active, b its standby (same CURVE key, the default lease);
#   the agents have both endpoints, sporectl both control sockets.  A
#   service of 2 clones ("failo") runs.  Then a changed manifest starts a
#   rollout and the service is scaled to 4, and while that is under way
#   a is killed with SIGKILL.  b takes over (its takeover and the hosts'
#   return are timed, printed as comments), finishes the rollout and the
#   scaling, and then: the clones spored lists are exactly the domains
#   libvirt has on the two hosts, each on its host (none lost, none
#   twice); no command id was executed twice by an agent; the events go
#   on past the takeover; a started again waits as b's standby.  TAP.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
. "$src/tests/pg-lib.sh"
pg_bindir >/dev/null ||
    skip_all "PostgreSQL's server (Debian package postgresql) is not installed"
site_test_prepare failover
trap 'site_test_cleanup; pg_stop' EXIT
SITE_TAG=f$$
SITE_LOST_AFTER=300 # agents stalled by a loaded, shared libvirtd are not lost
pg_start || { echo "Bail out! PostgreSQL does not start"; exit 1; }
printf '[state]\nbackend=postgresql\ndsn=%s\n' "$SPORE_TEST_PG_DSN" >"$SITE/state.conf"
SITE_SPORED_ARGS="--config $SITE/state.conf"
site_test_start

site_test_origin

ctl() { "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" -c "$SITE/mb/control.sock" "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
show() { ctl --json service-show failo 2>/dev/null; }
now() { date +%s.%N; }
owner() { virsh -q -c qemu:///system dumpxml "$1" 2>/dev/null | sed -n 's/.*<spore:clone .*host="\([^"]*\)".*/\1/p'; }
event_seen() { ctl events 2>/dev/null | grep -q -- "$1"; }

manifest() { # manifest VERSION: failo.xml of that version
    cat <<EOF
<service xmlns="urn:spore:manifest:1" name="failo">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet noapic"/>
  </vm>
  <customize>
    <hostname>{service}-{index}</hostname>
    <file path="/etc/spore-version">$1</file>
  </customize>
  <scaling min="1" max="8" initial="2"/>
</service>
EOF
}

# done_at GENERATION COUNT: no rollout under way, COUNT clones of
# GENERATION run, and the hosts have no other failo domain
done_at() {
    local s
    s=$(show) || return 1
    [ "$(jget "(r['service']['rollout'] or {}).get('state', 'done')" <<<"$s")" = done ] &&
        [ "$(jget "r['service']['generation']" <<<"$s")" = "$1" ] &&
        [ "$(jget "r['service']['running']" <<<"$s")" = "$2" ] &&
        [ "$(jget "len(r['service']['clones'])" <<<"$s")" = "$2" ] &&
        [ "$(site_domains | grep -c '^failo-')" = "$2" ]
}

# --- manager a (active), manager b (its standby, a's key)
check "spored a starts, active" site_manager_start
check "a holds the site's lease (epoch 1)" \
    wait_until 60 grep -q "leader epoch 1; before: none" "$SITE/spored.log"
mkdir -p "$SITE/manager-b" "$SITE/mb"
cp -p "$SITE/manager/curve.key" "$SITE/manager/curve.pub" "$SITE/manager-b/"
port_b=$(site_port)
"$BUILD/daemon/spored" --state-dir "$SITE/manager-b" --run-dir "$SITE/mb" \
    --listen "tcp://127.0.0.1:$port_b" --hosts-dir "$SITE/hosts.d" \
    --lost-after "$SITE_LOST_AFTER" --resend 5 \
    --metrics "127.0.0.1:$((port_b + 2))" --config "$SITE/state.conf" \
    >>"$SITE/spored-b.log" 2>&1 &
b_pid=$!
pids+=("$b_pid")
check "spored b waits as a standby" \
    wait_until 60 grep -q "standby: .* is the site's active manager (leader epoch 1)" "$SITE/spored-b.log"
check "a standby has no control socket" test ! -e "$SITE/mb/control.sock"

SITE_AGENT_ARGS="--manager tcp://127.0.0.1:$SITE_PORT,tcp://127.0.0.1:$port_b"
for h in fo1 fo2; do
    site_host_key "$h" >"$SITE/hosts.d/$h.pub"
    site_agent_start "$h"
done
up() { [ "$(ctl --json host-list | jget "sum(h['state']=='up' for h in r['hosts'])")" = 2 ]; }
check "fo1 and fo2 are up" wait_until 60 up
check "image-add" quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"
manifest v1 >"$SITE/v1.xml"
check "generation 1: 2 clones run (submit --wait)" \
    quiet timeout 900 "$BUILD/daemon/sporectl" -c "$SITE/mb/control.sock" -c "$SITE/m/control.sock" \
    submit --wait --timeout 880 "$SITE/v1.xml"

# --- a rollout and a scaling under way, and a is killed
manifest v2 >"$SITE/v2.xml"
check "submit of a changed manifest: generation 2" \
    test "$(ctl submit "$SITE/v2.xml")" = "failo: updated (generation 2)"
check "scale to 4" quiet ctl scale failo 4
check "the rollout is under way" wait_until 120 event_seen "rollout from generation 1 to 2"
t_kill=$(now)
site_manager_kill KILL
check "b takes over: its control socket appears" wait_until 120 test -S "$SITE/mb/control.sock"
t_active=$(now)
check "b says it holds the site's lease at epoch 2" \
    grep -q "leader epoch 2; before: " "$SITE/spored-b.log"
hosts_back() { grep -q "host fo1 connected" "$SITE/spored-b.log" && grep -q "host fo2 connected" "$SITE/spored-b.log"; }
check "both hosts said hello to b" wait_until 120 hosts_back
t_hosts=$(now)
echo "# kill -9 of the active manager -> b active: $(awk -v a="$t_kill" -v b="$t_active" 'BEGIN { printf "%.1f", b - a }') s, -> both hosts back with b: $(awk -v a="$t_kill" -v b="$t_hosts" 'BEGIN { printf "%.1f", b - a }') s (the test waits in 0.5 s steps)"
check "the agents saw the new manager's epoch" \
    eval 'grep -q "a new site manager is active (leader epoch 2, was 1)" "$SITE/fo1.log" "$SITE/fo2.log"'
check "b finishes: 4 clones of generation 2 run, nothing else" wait_until 3000 done_at 2 4
t_done=$(now)
echo "# kill -9 -> rollout and scaling done by b: $(awk -v a="$t_kill" -v b="$t_done" 'BEGIN { printf "%.0f", b - a }') s"

# --- nothing lost, nothing twice
listed=$(ctl --json clone-list failo | jget "'\n'.join(sorted(c['name'] + ' ' + c['host'] for c in r['clones']))")
domains=$(for d in $(site_domains | grep '^failo-' | sort); do echo "$d $(owner "$d")"; done)
echo "# clone-list: $(echo "$listed" | tr '\n' ' ')"
echo "# domains:    $(echo "$domains" | tr '\n' ' ')"
check "clone-list is exactly the hosts' domains, each on its host" test "$listed" = "$domains"
check "4 distinct domains" test "$(echo "$domains" | cut -d' ' -f1 | sort -u | wc -l)" = 4
twice=$(cat "$SITE/fo1.log" "$SITE/fo2.log" | grep -oE 'command [0-9]+: [a-z-]+$' | sort | uniq -d)
check "no command id was executed twice${twice:+: $twice}" test -z "$twice"
echo "# commands executed: $(cat "$SITE/fo1.log" "$SITE/fo2.log" | grep -cE 'command [0-9]+: [a-z-]+$'), acknowledged again from the journal: $(cat "$SITE/fo1.log" "$SITE/fo2.log" | grep -c 'was applied before')"
after_takeover() { ctl events | sed -n '/leader epoch 2)/,$p' | grep -q -- "$1"; }
check "events go on after the takeover (the rollout's end)" \
    after_takeover "rollout to generation 2 done"

# --- a again: b's standby
site_manager_start >/dev/null 2>&1 &
check "a started again waits as b's standby" \
    wait_until 60 grep -q "standby: .* is the site's active manager (leader epoch 2)" "$SITE/spored.log"
check "b is still the active manager" kill -0 "$b_pid"
finish
