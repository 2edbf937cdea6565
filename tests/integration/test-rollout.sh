#!/bin/bash
# test-rollout.sh BUILD-DIR: rolling updates on a real site — spored, two
# spore-agents (hosts ro1, ro2: names no other test uses, since domains
# are told apart by their owner on the shared libvirtd), libvirtd + QEMU, libguestfs, nbdkit shims and
# a lighttpd origin, with the busybox test guest.
#
#   A service of 3 clones ("rolly": domain names are unique on the shared
#   libvirtd, so no other test may use them) is changed twice while a probe counts, every
#   second, the service's domains libvirt lists as running: with the
#   default <update> (max-unavailable 0, max-surge 1) the count never
#   drops below 3; with max-unavailable 1, max-surge 0 never below 2.
#   Then a third change whose clones cannot be created (a file under
#   /etc/hostname, a file) stops the rollout: the old clones keep running,
#   untouched; `sporectl rollback` returns to them, and the failed clone
#   goes.  (noapic: under TCG on a loaded machine the guest kernel's
#   timer check fails, "IO-APIC + timer doesn't work!", and the guest
#   panics at boot: a clone libvirt calls running that dies.)  The
#   probe's minimum and each rollout's time are printed as
#   comments.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
site_test_prepare rollout
SITE_TAG=r$$
SITE_LOST_AFTER=300 # agents stalled by a loaded, shared libvirtd are not lost
site_test_start

site_test_origin

ctl() { sporectl_site "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
show() { ctl --json service-show rolly 2>/dev/null; }
rollout() { show | jget "(r['service']['rollout'] or {}).get('$1')"; }
db() { sqlite3 -cmd '.timeout 5000' "$SITE/manager/spored.db" "$@"; }
event_seen() { db "SELECT message FROM events" | grep -q -- "$1"; }
owner() { virsh -q -c qemu:///system dumpxml "$1" 2>/dev/null | sed -n 's/.*<spore:clone .*host="\([^"]*\)".*/\1/p'; }
gen_of() { virsh -q -c qemu:///system dumpxml "$1" 2>/dev/null | sed -n 's/.*<spore:clone .*generation="\([0-9]*\)".*/\1/p'; }
# running_domains: the site's rolly-* domains libvirt lists as running
running_domains() {
    local d o
    for d in $(virsh -q -c qemu:///system list --name 2>/dev/null); do
        case $d in rolly-*) ;; *) continue ;; esac
        o=$(owner "$d")
        [ "$o" = ro1 ] || [ "$o" = ro2 ] && echo "$d"
    done
}
# done_at GENERATION: the rollout to GENERATION is done, 3 clones of it
# run and no other domain of the site is left
done_at() {
    local s
    s=$(show) || return 1
    [ "$(jget "r['service']['rollout']['state']" <<<"$s")" = done ] &&
        [ "$(jget "r['service']['generation']" <<<"$s")" = "$1" ] &&
        [ "$(jget "r['service']['running']" <<<"$s")" = 3 ] &&
        [ "$(jget "len(r['service']['clones'])" <<<"$s")" = 3 ] &&
        [ "$(site_domains | grep -c '^rolly-')" = 3 ]
}
# probe_min FROM TO / probe_max: the least / most running in that window
probe_min() { awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { if (m == "" || $2 < m) m = $2 } END { print m }' "$SITE/probe"; }
probe_max() { awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { if ($2 > m) m = $2 } END { print m + 0 }' "$SITE/probe"; }
now() { date +%s.%N; }

manifest() { # manifest VERSION [EXTRA-XML]: rolly.xml of that version
    cat <<EOF
<service xmlns="urn:spore:manifest:1" name="rolly">
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
    ${3:-}
  </customize>
  <scaling min="1" max="8" initial="3"/>
  ${2:-}
</service>
EOF
}

# --- the site: two hosts, both keys placed in the hosts directory
check "spored starts" site_manager_start
for h in ro1 ro2; do
    site_host_key "$h" >"$SITE/hosts.d/$h.pub"
    site_agent_start "$h"
done
up() { [ "$(ctl --json host-list | jget "sum(h['state']=='up' for h in r['hosts'])")" = 2 ]; }
check "ro1 and ro2 are up" wait_until 60 up
check "image-add" quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"

manifest v1 >"$SITE/v1.xml"
check "generation 1: 3 clones run (submit --wait)" \
    quiet timeout 900 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" submit --wait --timeout 880 "$SITE/v1.xml"
check "service-show has no rollout yet" test "$(rollout state)" = None

# the probe: every second, the time and how many of the site's rolly-*
# domains libvirt runs (a domain's owner is looked up once, by UUID)
(
    declare -A ours
    while :; do
        c=0
        for u in $(virsh -q -c qemu:///system list --uuid 2>/dev/null); do
            if [ -z "${ours[$u]:-}" ]; then
                x=$(virsh -q -c qemu:///system dumpxml "$u" 2>/dev/null)
                case $x in
                *"<name>rolly-"*'host="ro1"'* | *"<name>rolly-"*'host="ro2"'*) ours[$u]=1 ;;
                *) ours[$u]=0 ;;
                esac
            fi
            c=$((c + ours[$u]))
        done
        echo "$(now) $c" >>"$SITE/probe"
        sleep 1
    done
) &
pids+=($!)
check "the probe sees 3 running" wait_until 20 eval '[ "$(tail -n 1 "$SITE/probe" | cut -d" " -f2)" = 3 ]'

# --- change 1: defaults (max-unavailable 0, max-surge 1)
manifest v2 >"$SITE/v2.xml"
t0=$(now)
check "submit of a changed manifest: updated to generation 2" \
    test "$(ctl submit "$SITE/v2.xml")" = "rolly: updated (generation 2)"
check "service-show says it is rolling, from 1 to 2" \
    eval 'ctl service-show rolly | grep -q "^Rollout: *rolling, generation 1 -> 2"'
check "a new clone is added before any old one goes (rolly-3, surge)" \
    wait_until 120 event_seen "generation 2: 0/3 clones updated (0 running), 3 old (3 running); adding rolly-3"
check "rollout to generation 2 done: 3 clones of it run, nothing else" \
    wait_until 3000 done_at 2
t1=$(now)
min1=$(probe_min "$t0" "$t1") max1=$(probe_max "$t0" "$t1")
echo "# change 1 (max-unavailable 0, max-surge 1): $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s; running min $min1, max $max1"
check "during change 1 never fewer than 3 ran (min $min1)" test "$min1" -ge 3
for d in $(running_domains); do
    check "$d is of generation 2" test "$(gen_of "$d")" = 2
done
check "events: rollout started, steps, done" \
    eval 'event_seen "rollout from generation 1 to 2" && event_seen "rollout to generation 2 done in"'
check "service-show says done, with its time" \
    eval 'ctl service-show rolly | grep -Eq "^Rollout: *done, generation 1 -> 2, started .*, took [0-9]+ s"'

# --- change 2: max-unavailable 1, max-surge 0
manifest v3 '<update max-unavailable="1" max-surge="0"/>' >"$SITE/v3.xml"
t0=$(now)
check "submit: updated to generation 3" \
    test "$(ctl submit "$SITE/v3.xml")" = "rolly: updated (generation 3)"
check "rollout to generation 3 done" wait_until 3000 done_at 3
t1=$(now)
min2=$(probe_min "$t0" "$t1") max2=$(probe_max "$t0" "$t1")
echo "# change 2 (max-unavailable 1, max-surge 0): $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }') s; running min $min2, max $max2"
check "during change 2 never fewer than 2 ran (min $min2)" test "$min2" -ge 2
check "the service never had more than 3 clones desired at once (surge 0)" \
    test -z "$(db "SELECT message FROM events WHERE kind='rollout-step' AND message LIKE '%generation 3:%' AND message LIKE '%adding%' AND message NOT LIKE '%removing%' AND message LIKE '%, 3 old%'")"

# --- change 3 fails: the old clones keep running, rollback returns to them
before=$(for d in $(running_domains | sort); do echo "$d:$(virsh -q -c qemu:///system domid "$d")"; done | tr '\n' ' ')
manifest v4 "" '<file path="/etc/hostname/broken">x</file>' >"$SITE/v4.xml"
t0=$(now)
check "submit of a manifest whose clones cannot be created: generation 4" \
    test "$(ctl submit "$SITE/v4.xml")" = "rolly: updated (generation 4)"
check "the rollout fails" wait_until 600 eval '[ "$(rollout state)" = failed ]'
t1=$(now)
check "service-show says which clone failed and why" \
    eval 'ctl service-show rolly | grep -q "^Failure: *a clone of generation 4 failed: ro[12]: .*hostname/broken"'
check "a rollout-failed event names the way back" \
    event_seen "rollout to generation 4 stopped, 3 old clones kept.*sporectl rollback rolly returns to generation 3"
sleep 5 # a few more passes: nothing more happens
after=$(for d in $(running_domains | sort); do echo "$d:$(virsh -q -c qemu:///system domid "$d")"; done | tr '\n' ' ')
check "the 3 old clones run on, untouched (same domains, same ids)" \
    test "$before" = "$after" -a "$(running_domains | wc -l)" = 3
check "during the failed change never fewer than 3 ran" \
    test "$(probe_min "$t0" "$(now)")" -ge 3
check "rollback rolly: back to generation 3" \
    test "$(ctl rollback rolly)" = "rolly: rolling back from generation 4 to 3"
check "the rollback is done: 3 clones of generation 3 run, the failed one gone" \
    wait_until 240 done_at 3
after=$(for d in $(running_domains | sort); do echo "$d:$(virsh -q -c qemu:///system domid "$d")"; done | tr '\n' ' ')
check "and they are the same domains as before (nothing recreated)" \
    test "$before" = "$after"
check "no clone row of generation 4 is left" \
    test "$(db "SELECT COUNT(*) FROM clones WHERE service='rolly' AND generation=4")" = 0
check "rollback again goes to generation 2 (the newest kept before 3)" \
    eval 'ctl rollback rolly | grep -q "from generation 3 to 2"'
check "resubmitting generation 3's manifest is a rollback to it" \
    test "$(ctl submit "$SITE/v3.xml")" = "rolly: rolled back (generation 3)"
check "and generation 3 runs again, as before" wait_until 1200 done_at 3
echo "# probe: $(wc -l <"$SITE/probe") samples"
finish
