#!/bin/bash
# test-io-pause.sh BUILD-DIR: a clone paused by an I/O error of its disk is
# resumed by its agent once the cause is gone — spored and one spore-agent
# (ip1, a name no other test uses) with a shim timeout of 5 s, libvirtd +
# QEMU, an nbdkit shim and a lighttpd origin.
#
#   A service of one clone of the busybox test guest, customized by
#   cloud-init (so that creating it reads nothing of the image: no
#   appliance), is submitted while the origin is down.  Its boot's first
#   read of the disk cannot be answered: after the shim's timeout QEMU
#   pauses the domain (error_policy='stop'; the guest sees no error).
#   Required: the agent resumes it (the failed read is retried), again
#   with backoff while it pauses again, and says so in its log; spored
#   records a clone-paused event; once the origin is back the clone runs
#   and boots, with no I/O error on its console, and spored records
#   clone-resumed — one of each for the outage, however many resumes it
#   took.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
site_test_prepare iopause
command -v genisoimage >/dev/null || command -v xorrisofs >/dev/null ||
    skip_all "neither genisoimage nor xorrisofs is installed (cloud-init seeds)"
SITE_TAG=p$$
SITE_LOST_AFTER=300 # an agent stalled by a loaded, shared libvirtd is not lost
SITE_AGENT_ARGS="--shim-timeout 5"
site_test_start

site_test_origin

service=iopause$$
domain=$service-0
ctl() { sporectl_site "$@"; }
db() { sqlite3 -cmd '.timeout 5000' "$SITE/manager/spored.db" "$@"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
reason() { virsh -q -c qemu:///system domstate --reason "$domain" 2>/dev/null | head -n 1; }
events_of() { db "SELECT message FROM events WHERE kind = '$1'"; }
resumes() { grep -c "domain $domain paused again by an I/O error" "$SITE/ip1.log"; }

cat >"$SITE/service.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="$service">
  <image name="test-guest"><origin url="http://127.0.0.1:$port/disk.raw"/></image>
  <vm hypervisor="$SITE_VIRT">
    <vcpus>1</vcpus>
    <memory unit="MiB">160</memory>
    <boot kernel="$SITE/vmlinuz" initrd="$SITE/initrd.img"
          cmdline="console=ttyS0 root=/dev/vda rw panic=-1 quiet noapic"/>
  </vm>
  <customize method="cloud-init"><hostname>{service}-{index}</hostname></customize>
  <scaling min="1" max="1" initial="1"/>
</service>
EOF

check "spored starts" site_manager_start
site_host_key ip1 >"$SITE/hosts.d/ip1.pub"
site_agent_start ip1
check "ip1 is up" wait_until 60 eval '[ "$(ctl --json host-list | jget "r[\"hosts\"][0][\"state\"]")" = up ]'
check "image-add (the origin is up)" quiet ctl image-add test-guest "http://127.0.0.1:$port/disk.raw"

# --- the origin goes away; the clone is made and started without it
kill "$origin_pid"
wait "$origin_pid" 2>/dev/null
check "the origin is down" eval '! curl -s -o /dev/null "http://127.0.0.1:$port/disk.raw"'
check "submit" quiet ctl submit "$SITE/service.xml"
check "the clone's domain is paused by an I/O error" \
    wait_until 900 eval '[ "$(reason)" = "paused (I/O error)" ]'
check "the agent says it resumes it" \
    wait_until 120 grep -q "domain $domain was paused by an I/O error of its disk; resuming it" "$SITE/ip1.log"
check "and resumes it again, with backoff, while the origin is down" \
    wait_until 300 eval '[ "$(resumes)" -ge 2 ]'
grep "domain $domain" "$SITE/ip1.log" | sed 's/^/# agent: /'
check "spored records a clone-paused event" \
    wait_until 120 eval 'events_of clone-paused | grep -q "^$domain paused by an I/O error"'
check "the guest has not booted" eval '! booted "$SITE/ip1/console/$domain.log"'

# --- the origin comes back
check "the origin restarts" start_origin "$SITE/www" "$port" "$SITE"
check "the clone runs" wait_until 300 eval '[ "$(reason)" = "running (unpaused)" ] || [ "$(reason)" = "running (booted)" ]'
check "and boots" wait_until 900 booted "$SITE/ip1/console/$domain.log"
check "with no I/O error on its console" \
    eval '! grep -qai "I/O error" "$SITE/ip1/console/$domain.log"'
check "the domain stays running" \
    test "$(virsh -q -c qemu:///system domstate "$domain" 2>/dev/null | head -n 1)" = running
check "the agent says it runs again" \
    wait_until 120 grep -Eq "domain $domain runs again after [0-9]+ resumes?" "$SITE/ip1.log"
check "spored records a clone-resumed event" \
    wait_until 120 eval 'events_of clone-resumed | grep -q "^$domain runs again after an I/O error"'
check "one outage, one clone-paused and one clone-resumed event (not one per resume)" \
    test "$(events_of clone-paused | grep -c "^$domain ")/$(events_of clone-resumed | grep -c "^$domain ")" = 1/1
check "service-show counts it running" \
    wait_until 120 eval '[ "$(ctl --json service-show "$service" | jget "r[\"service\"][\"running\"]")" = 1 ]'
finish
