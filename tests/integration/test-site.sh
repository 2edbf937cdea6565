#!/bin/bash
# test-site.sh BUILD-DIR: the whole site end to end — spored, three
# spore-agents (hosts hv1, hv2, hv3 on one machine), libvirtd + QEMU,
# libguestfs, nbdkit shims and a real HTTP origin (lighttpd).
#
#   hosts: hv1's key placed in the hosts directory, hv2 accepted with
#   host-accept, hv3 refused until accepted; image-add indexes the image
#   from the origin; submit: clones boot with their own hostnames, spread
#   over the hosts; a replayed command is applied once; kill -9 of the
#   manager mid-rollout and SIGTERM of an agent mid-create, then convergence to
#   exactly the desired clones (no duplicates, no orphans: domains,
#   owners, volumes, commands); a host that dies is lost and its clone runs
#   again elsewhere, and its old overlay goes when it comes back; a host
#   down while spored restarts is lost too; scale up and down;
#   service-delete removes domains and volumes.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
site_test_prepare site
SITE_TAG=t$$
SITE_LOST_AFTER=20
site_test_start

site_test_origin

ctl() { sporectl_site "$@"; }
jget() { # jget PYTHON-EXPRESSION-ON-r: evaluate on the JSON on stdin
    python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"
}
db() { sqlite3 -cmd '.timeout 5000' "$SITE/manager/spored.db" "$@"; }
event_seen() { ctl --json events --since 0 2>/dev/null | grep -q -- "$1"; }
# converged N: exactly clones 0..N-1 of web run, each once, current
# generation, on the hosts the manager placed them
converged() {
    local want=$1 show names
    show=$(ctl --json service-show web 2>/dev/null) || return 1
    [ "$(jget 'r["service"]["running"]' <<<"$show")" = "$want" ] || return 1
    [ "$(jget 'r["service"]["desired"]' <<<"$show")" = "$want" ] || return 1
    names=$(site_domains | grep '^web-' | sort | tr '\n' ' ')
    [ "$names" = "$(for i in $(seq 0 $((want - 1))); do printf 'web-%s ' "$i"; done)" ]
}
host_of() { ctl --json clone-list web | jget "[c['host'] for c in r['clones'] if c['name']=='$1'][0]"; }
clones_on() { ctl --json clone-list web | jget "' '.join(c['name'] for c in r['clones'] if c['host']=='$1')"; }
domid() { virsh -q -c qemu:///system domid "$1" 2>/dev/null; }
# owner DOMAIN: the host its <spore:clone> metadata names
owner() { virsh -q -c qemu:///system dumpxml "$1" 2>/dev/null | sed -n 's/.*<spore:clone .*host="\([^"]*\)".*/\1/p'; }
# pool_volumes HOST: the volumes libvirt lists in HOST's pool, one a line
pool_volumes() {
    virsh -q -c qemu:///system pool-refresh "spore-$SITE_TAG-$1" >/dev/null 2>&1
    virsh -q -c qemu:///system vol-list "spore-$SITE_TAG-$1" 2>/dev/null | awk 'NF { print $1 }' | sort
}
# exactly N: no duplicates, no orphans — the site's domains are web-0 ..
# web-N-1, each owned (its metadata's host) by the host the manager placed
# it on; each host's pool holds the overlays of its own clones and nothing
# else; no command is pending.  What differs is in $SITE/why.
exactly() {
    local want=$1 i h got expect pending
    got=$(site_domains | grep '^web-' | sort | tr '\n' ' ')
    expect=$(for i in $(seq 0 $((want - 1))); do printf 'web-%s ' "$i"; done)
    [ "$got" = "$expect" ] || { echo "domains: $got, want $expect" >"$SITE/why"; return 1; }
    for i in $(seq 0 $((want - 1))); do
        h=$(host_of "web-$i")
        [ "$(owner "web-$i")" = "$h" ] ||
            { echo "web-$i is placed on $h, its metadata says $(owner "web-$i")" >"$SITE/why"; return 1; }
    done
    for h in hv1 hv2 hv3; do
        got=$(pool_volumes "$h" | tr '\n' ' ')
        expect=$(for c in $(clones_on "$h"); do echo "$c.qcow2"; done | sort | tr '\n' ' ')
        [ "$got" = "$expect" ] || { echo "$h's pool: '$got', want '$expect'" >"$SITE/why"; return 1; }
    done
    pending=$(db "SELECT COUNT(*) FROM commands WHERE state='pending'")
    [ "$pending" = 0 ] || { echo "$pending commands pending" >"$SITE/why"; return 1; }
}
# exactly_within N: exactly N within 60 s (convergence may still be
# removing a volume or awaiting an ack), else what differs as a comment
exactly_within() { wait_until 120 exactly "$1" || { sed 's/^/# /' "$SITE/why"; return 1; }; }
# last_event: the id of the newest event; event_after ID PATTERN: an event
# newer than ID matches
last_event() { db "SELECT COALESCE(MAX(id), 0) FROM events"; }
event_after() { db "SELECT message FROM events WHERE id > $1" | grep -q -- "$2"; }
# host_dies HOST: its agent, its shims and its guests go at once (on this
# shared libvirtd, its domains must go too, or no other host can define
# clones of those names)
host_dies() {
    local d p
    site_agent_kill "$1" KILL
    for p in $(cat "$SITE/$1"/run/shims/*.pid 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    for d in $(site_domains); do
        [ "$(owner "$d")" = "$1" ] || continue
        virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
        virsh -q -c qemu:///system undefine "$d" >/dev/null 2>&1
    done
}

# --- the site
check "spored starts" site_manager_start
check "hv1's key placed in the hosts directory" \
    eval 'site_host_key hv1 >"$SITE/hosts.d/hv1.pub"'
for h in hv1 hv2 hv3; do site_agent_start "$h"; done
host_state() { ctl --json host-list | jget "[h['state'] for h in r['hosts'] if h['name']=='$1'] or ['none']" | tr -d "[]'"; }
check "hv1 (key in the hosts directory) is up" wait_until 40 eval '[ "$(host_state hv1)" = up ]'
check "hv2 asks to join and is pending" wait_until 40 eval '[ "$(host_state hv2)" = pending ]'
check "the manager logged it with the command to accept it" \
    event_seen "host hv2 .*asks to join.*sporectl host-accept hv2"
check "host-accept hv2" quiet ctl host-accept hv2
check "hv2 is then up" wait_until 40 eval '[ "$(host_state hv2)" = up ]'
check "hv3 (not accepted) stays pending" test "$(host_state hv3)" = pending
check "hv3's agent says how to accept it" \
    grep -q "sporectl host-accept hv3" "$SITE/hv3.log"

# --- the image: indexed by the manager from the origin, once
check "image-add indexes the image from the HTTP origin" \
    quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"
want_id=$("$BUILD/daemon/sporectl" image-index -o "$SITE/disk.idx" "$guest/disk.raw" 2>/dev/null)
check "its id is the one image-index computes" \
    test "$(ctl --json image-list | jget 'r["images"][0]["id"]')" = "$want_id"

cat >"$SITE/web.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="web">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet"/>
  </vm>
  <customize><hostname>{service}-{index}</hostname></customize>
  <scaling min="1" max="4" initial="2"/>
</service>
EOF
sed 's/test-guest/no-such-image/' "$SITE/web.xml" >"$SITE/bad.xml"
ctl submit "$SITE/bad.xml" >/dev/null 2>"$SITE/err"
check "a manifest naming an unknown image is refused" test $? = 1
check "saying which image" grep -q "no-such-image.*not registered" "$SITE/err"

# --- submit: two clones, spread, customized, booted
check "submit --wait: the clones run" \
    quiet timeout 600 "$BUILD/daemon/sporectl" -c "$SITE/m/control.sock" submit --wait "$SITE/web.xml"
check "converged to 2 clones" wait_until 120 converged 2
check "spread: web-0 and web-1 on different hosts" \
    test "$(host_of web-0)" != "$(host_of web-1)"
check "hv3, not accepted, got none" \
    test "$(ctl --json clone-list web | jget "sum(c['host']=='hv3' for c in r['clones'])")" = 0
for i in 0 1; do
    h=$(host_of "web-$i")
    check "web-$i boots with its own hostname (on $h)" \
        wait_until 120 grep -qa "spore-guest: hostname=web-$i" "$SITE/$h/console/web-$i.log"
done
check "the clones are backed by the shims' exports (lazy)" \
    grep -q "nbd+unix" <(qemu-img info -U "$SITE/$(host_of web-0)/pool/web-0.qcow2")
check "no create command stored the image's index (index-get instead)" \
    test "$(db "SELECT count(*) FROM commands WHERE op='clone-create' AND body LIKE '%\"index\":%'")" = 0
for i in 0 1; do
    h=$(host_of "web-$i")
    check "$h asked the manager for the image's index, once" \
        test "$(grep -c "asking the site manager for its index" "$SITE/$h.log")" = 1
done

# --- a replayed command is applied once
cmd=$(db "SELECT id FROM commands WHERE op='clone-create' AND state='done' ORDER BY id LIMIT 1")
h=$(db "SELECT host FROM commands WHERE id=$cmd")
before=$(domid web-0)/$(domid web-1)
db "UPDATE commands SET state='pending', sent=0 WHERE id=$cmd"
check "the manager sends command $cmd to $h again" \
    wait_until 60 eval "[ \"\$(db \"SELECT state FROM commands WHERE id=$cmd\")\" = done ]"
check "the agent answers it from its journal" \
    grep -q "command $cmd was applied before" "$SITE/$h.log"
check "and applies nothing: the clones did not restart" \
    test "$(domid web-0)/$(domid web-1)" = "$before"

# --- kill -9 of the manager mid-rollout (hv3 accepted, scale to 3)
quiet ctl host-accept hv3
wait_until 40 eval '[ "$(host_state hv3)" = up ]'
check "scale web 3" quiet ctl scale web 3
check "a create command for web-2 is issued" wait_until 60 event_seen "create web-2"
site_manager_kill KILL
check "spored restarts after kill -9" site_manager_start
check "the site converges to exactly 3 clones" wait_until 300 converged 3
check "no duplicates, no orphans: domains, owners, volumes, no pending command" \
    exactly_within 3
check "web-2 went to hv3 (spread)" test "$(host_of web-2)" = hv3

# --- an agent stopped mid-create (scale to 4: web-3 on hv1 or hv2)
check "scale web 4" quiet ctl scale web 4
check "a create command for web-3 is issued" wait_until 60 event_seen "create web-3"
h3=$(db "SELECT host FROM clones WHERE service='web' AND idx=3")
cid=$(db "SELECT c.id FROM commands c, json_each(c.body, '\$.indexes') i WHERE c.op='clone-create' AND c.service='web' AND c.host='$h3' AND i.value=3 ORDER BY c.id DESC LIMIT 1")
keep=$(clones_on "$h3" | tr ' ' '\n' | grep -vx web-3 | head -n 1)
keep_id=$(domid "$keep")
check "$h3's agent has started command $cid (create web-3)" \
    wait_until 60 grep -q "command $cid: clone-create" "$SITE/$h3.log"
sleep 3 # into the customization
# SIGTERM, not -9: the agent leaves the running command unfinished and
# exits at once, without exit()'s handlers (libguestfs's closed the
# handle under the running customization: a double free)
h3_pid=$(cat "$SITE/$h3.pid")
site_agent_kill "$h3" TERM
wait "$h3_pid" 2>/dev/null
h3_status=$?
check "SIGTERM mid-create: $h3's agent exits 0 (status $h3_status), saying it left the command" \
    eval '[ "$h3_status" = 0 ] && grep -q "was still running: left unfinished" "$SITE/$h3.log"'
check "... and nothing crashed (no double free, no abort)" \
    eval '! grep -Eq "double free|corruption|Aborted|AddressSanitizer" "$SITE/$h3.log"'
check "command $cid was pending when the agent was stopped" \
    eval '[ "$(db "SELECT state FROM commands WHERE id=$cid")" = pending ] && ! grep -q "command $cid done" "$SITE/$h3.log"'
site_agent_start "$h3"
check "after the agent stopped mid-create, 4 clones converge" wait_until 300 converged 4
check "no duplicates, no orphans: domains, owners, volumes, no pending command" \
    exactly_within 4
check "clones keep running across agent restarts ($keep, on $h3, has the same domain id)" \
    test -n "$keep_id" -a "$(domid "$keep")" = "$keep_id"

# --- a host that dies is lost; its clone runs again on another host
lost=$(host_of web-2)
lost_volumes=$(pool_volumes "$lost" | tr '\n' ' ')
check "$lost's pool holds web-2's overlay" test "$lost_volumes" = "web-2.qcow2 "
mark=$(last_event)
host_dies "$lost"
check "$lost, silent, is lost after the grace period" \
    wait_until $((SITE_LOST_AFTER * 2 + 20)) event_after "$mark" "host $lost lost"
check "its clone web-2 is placed on another host" \
    wait_until 20 eval '[ "$(host_of web-2)" != "$lost" ]'
new_host=$(host_of web-2)
check "web-2 runs again, under $new_host's agent, before $lost comes back" \
    wait_until 300 eval 'converged 4 && [ "$(owner web-2)" = "$new_host" ]'
check "web-2 boots with its own hostname on $new_host" \
    wait_until 120 grep -qa "spore-guest: hostname=web-2" "$SITE/$new_host/console/web-2.log"
mark=$(last_event)
site_agent_start "$lost"
check "when $lost is back, the destroy that waited for it removes its old overlay" \
    wait_until 120 eval '[ -z "$(pool_volumes "$lost")" ] && event_after "$mark" "done on $lost: web-2 absent"'
check "and web-2 still runs once, on $new_host: no duplicates, no orphans" \
    eval 'wait_until 60 converged 4 && exactly_within 4 && [ "$(owner web-2)" = "$new_host" ]'

# --- a host down while spored restarts is lost too, its clones placed again
down=$(host_of web-0)
down_clones=$(clones_on "$down")
mark=$(last_event)
host_dies "$down"
site_manager_kill TERM
check "spored restarts while $down is down" site_manager_start
check "$down, never heard from since, is lost after the grace period" \
    wait_until $((SITE_LOST_AFTER * 2 + 20)) event_after "$mark" "host $down lost"
check "its clones ($down_clones) run again on the other hosts" \
    wait_until 300 eval 'converged 4 && [ -z "$(clones_on "$down")" ]'
mark=$(last_event)
site_agent_start "$down"
check "when $down is back, its old overlays go: no duplicates, no orphans" \
    eval 'wait_until 120 event_after "$mark" "host $down is back" && exactly_within 4'

# --- scale down, delete
check "scale web 1" quiet ctl scale web 1
check "converged to 1 clone" wait_until 240 converged 1
check "the removed clones' volumes are gone" \
    test -z "$(for h in hv1 hv2 hv3; do ls "$SITE/$h/pool" 2>/dev/null; done | grep -v '^web-0.qcow2$')"
check "scale outside [min, max] is refused" eval '! quiet ctl scale web 9'
check "service-delete web" quiet ctl service-delete web
gone() { [ -z "$(site_domains | grep '^web-')" ] && ! ctl --json service-list | grep -q '"web"'; }
check "its domains and the service are gone" wait_until 240 gone
check "and its volumes" \
    test -z "$(for h in hv1 hv2 hv3; do ls "$SITE/$h/pool" 2>/dev/null; done)"
check "every step is in the event log" \
    event_seen "service web deleted"
finish
