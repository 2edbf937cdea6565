#!/bin/bash
# test-site-protocol.sh BUILD-DIR SITE-PROBE: spored without libvirt.
# The control socket is 0660 and only its group may use it.  Hostile
# clients on its agents' endpoint: a key that is not accepted gets nothing;
# an accepted host's malformed, multi-frame, unknown and oversized messages
# are dropped with a log line naming the host, and the manager keeps
# serving.  A host down when spored restarts is lost after the grace
# period.  SIGHUP reloads.  image-add indexes from the origin, or takes
# --index FILE (a corrupt one refused).  A load balancer's reporter pushes
# requests messages that act on a service's rule; the cooldown survives a
# kill -9.  A clean SIGTERM exit.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1 probe=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
SITE=$(mktemp -d /tmp/spore-proto.XXXXXX)
cleanup() { site_stop; rm -rf "$SITE"; }
trap cleanup EXIT
SITE_TAG=p$$
printf '[spored]\nshutdown_timeout=60\n' >"$SITE/spored.conf"
SITE_SPORED_ARGS="--config $SITE/spored.conf"
. "$src/scripts/site-lib.sh"

check "spored starts" site_manager_start
mkey=$(cat "$SITE/manager/curve.pub")

# --- the control socket: its mode and group decide who administers
sock=$SITE/m/control.sock
chmod 0755 "$SITE" # so that only the socket's own mode stops others
as_nobody() { # as_nobody GROUP: sporectl host-list as nobody, in GROUP only
    setpriv --reuid=nobody --regid="$1" --clear-groups \
        "$BUILD/daemon/sporectl" -c "$sock" host-list
}
check "the control socket is 0660, the daemon's user and group" \
    test "$(stat -c '%a %U:%G' "$sock")" = "660 root:root"
check "a user outside its group cannot connect (permission denied)" \
    eval '! as_nobody nogroup >/dev/null 2>"$SITE/err" && grep -q "Permission denied" "$SITE/err"'

ep=tcp://127.0.0.1:$SITE_PORT
check "a host whose key is not accepted gets nothing" \
    test "$("$probe" "$ep" "$mkey" "$SITE/stranger" stranger hello)" = nothing
check "and the refusal is logged" \
    wait_until 10 grep -q "refused an unknown key from 127.0.0.1" "$SITE/spored.log"
site_host_key hv1 >"$SITE/hosts.d/hv1.pub"
check "an accepted host is welcomed" \
    test "$("$probe" "$ep" "$mkey" "$SITE/hv1/state" hv1 hello)" = welcome
check "after malformed, multi-frame and unknown messages it still is" \
    test "$("$probe" "$ep" "$mkey" "$SITE/hv1/state" hv1 garbage)" = welcome
for what in "malformed message: not JSON" "protocol version 99" \
    "unknown type 'launch-missiles'" "a report without clones" \
    "message of several frames" "not a JSON object"; do
    check "logged, naming the host: $what" \
        grep -q "host hv1: .*${what}" "$SITE/spored.log"
done
check "a frame over the size limit drops the connection, the next is served" \
    test "$("$probe" "$ep" "$mkey" "$SITE/hv1/state" hv1 oversized)" = welcome
check "spored is still running" kill -0 "$(cat "$SITE/spored.pid")"
check "and answers sporectl" quiet sporectl_site host-list

# --- a host down when spored restarts is lost after the grace period
host_state() { sporectl_site --json host-list | python3 -c "import json,sys; print([h['state'] for h in json.load(sys.stdin)['hosts'] if h['name']=='$1'])"; }
check "hv1 says hello once more" \
    test "$("$probe" "$ep" "$mkey" "$SITE/hv1/state" hv1 hello)" = welcome
check "and is up" test "$(host_state hv1)" = "['up']"
printf '[spored]\nshutdown_timeout=60\ncontrol_group=nogroup\n' >"$SITE/spored.conf"
site_manager_kill TERM
check "spored restarts (control_group=nogroup)" site_manager_start
check "its control socket is 0660, group nogroup" \
    test "$(stat -c '%a %U:%G' "$sock")" = "660 root:nogroup"
check "a member of nogroup may now administer the site" quiet as_nobody nogroup
check "others still may not" \
    eval '! as_nobody 54321 >/dev/null 2>"$SITE/err" && grep -q "Permission denied" "$SITE/err"'
check "hv1, not heard from since, is down, not up" test "$(host_state hv1)" = "['down']"
check "and lost once it stayed silent for lost_after (10 s)" \
    wait_until 40 eval '[ "$(host_state hv1)" = "['"'"'lost'"'"']" ]'
check "which is an event" \
    grep -q "host hv1 lost: no report for 10 s" <(sporectl_site events)

# --- SIGHUP reloads the configuration; a broken file changes nothing
printf '[spored]\nshutdown_timeout=7\nresend=9\n' >"$SITE/spored.conf"
kill -HUP "$(cat "$SITE/spored.pid")"
check "SIGHUP reloads the configuration file" \
    wait_until 10 grep -q "configuration reloaded: lost_after=10 s, resend=5 s, shutdown_timeout=7 s" "$SITE/spored.log"
printf '[spored]\nshutdown_timeout=soon\n' >"$SITE/spored.conf"
kill -HUP "$(cat "$SITE/spored.pid")"
check "a malformed file is reported and changes nothing" \
    wait_until 10 grep -q "SIGHUP: config '$SITE/spored.conf'.*nothing changed" "$SITE/spored.log"
check "spored still runs after both" kill -0 "$(cat "$SITE/spored.pid")"

# --- the control socket's image-add indexes an image from its origin (a
# file URL here), and a failing download is a clear error
head -c $((3 * 1024 * 1024 + 777)) /dev/urandom >"$SITE/image.raw"
want=$("$BUILD/daemon/sporectl" image-index -o "$SITE/image.idx" "$SITE/image.raw" 2>/dev/null)
check "image-add indexes the image from its origin" \
    grep -q "$want" <(sporectl_site image-add img "file://$SITE/image.raw")
check "a download that fails is an error naming the URL" \
    grep -q "cannot download the image: origin 'file://$SITE/nothing'" <(sporectl_site image-add img2 "file://$SITE/nothing" 2>&1)

# --- image-add --index FILE: the manager takes a published index as it is
indexed=$(grep -c "indexing image" "$SITE/spored.log")
check "image-add --index with the index of the same image: the same id, accepted" \
    grep -q "img: added, $want" <(sporectl_site image-add --index "$SITE/image.idx" img "file://$SITE/image.raw")
check "a new name with --index is registered under that id" \
    grep -q "img3: added, $want" <(sporectl_site image-add --index "$SITE/image.idx" img3 "file://$SITE/nothing-needed")
check "without the manager reading the origin" \
    test "$(grep -c "indexing image" "$SITE/spored.log")" = "$indexed"
python3 -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[100] ^= 0xff; open(sys.argv[2], "wb").write(b)' \
    "$SITE/image.idx" "$SITE/corrupt.idx" # chunk 1's digest, one byte inverted
sporectl_site image-add --index "$SITE/corrupt.idx" img4 "file://$SITE/image.raw" >/dev/null 2>"$SITE/err"
check "a corrupt index is refused (exit status 1)" test $? = 1
check "saying so, with the image's name" \
    grep -q "the index given for image 'img4': index checksum does not match: the index is corrupt" "$SITE/err"
check "and nothing is registered" eval '! sporectl_site image-list | grep -q img4'

# --- requests pushed on the agents' endpoint, as a load balancer's
# reporter does (a host key of its own, in the hosts directory), act on a
# service's rules; the cooldown they start survives a kill -9 of spored
cat >"$SITE/web.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="web">
  <image name="img"><origin url="file://$SITE/image.raw"/></image>
  <vm><vcpus>1</vcpus><memory unit="MiB">64</memory></vm>
  <scaling min="1" max="3" initial="1" cooldown="120s">
    <rule metric="requests" above="100" add="1"/>
  </scaling>
</service>
EOF
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
show() { sporectl_site --json service-show web | jget "$1"; }
push() { "$probe" "$ep" "$mkey" "$SITE/lb1/state" lb1 requests web "$1"; }
scaled_up() { sporectl_site --json events --service web | jget 'sum(e["kind"] == "scaled-up" for e in r["events"])'; }
check "submit a service with a requests rule" quiet sporectl_site submit "$SITE/web.xml"
site_host_key lb1 >"$SITE/hosts.d/lb1.pub"
check "the reporter pushes 40 requests" test "$(push 40)" = sent
check "service-show's rule has the value: 40 per clone per minute (none runs: 1)" \
    wait_until 30 eval '[ "$(show "float(r[\"service\"][\"rules\"][0][\"value\"] or -1)")" = 40.0 ]'
check "below the threshold: no action" test "$(show 'r["service"]["desired"]')" = 1
lb_row() { sporectl_site --json host-list | jget "[(h['state'], h['accepted'], h['cpus'], h['clones']) for h in r['hosts'] if h['name'] == 'lb1']"; }
# up for lost_after after its last push: a push of 0 just before looking
# (on a loaded machine the pushes above may be older than lost_after)
check "host-list shows the reporter as an accepted host, up, without capacity or clones" \
    wait_until 20 eval '[ "$(push 0)" = sent ] && [ "$(lb_row)" = "[('"'up'"', True, 0, 0)]" ]'
check "500 more" test "$(push 500)" = sent
check "rule 1 fires: 1 -> 2 clones, an event with the rule and the value" \
    wait_until 30 eval 'sporectl_site events --service web | grep -q "service web: rule 1 (requests above 100.*540.*1 -> 2 clones"'
check "the desired count is 2" test "$(show 'r["service"]["desired"]')" = 2
cooldown=$(show 'r["service"]["cooldown_until"]')
check "a cooldown of 120 s runs" \
    test "$(python3 -c "import time; print(100 < $cooldown - time.time() <= 120)")" = True
lb_is() { # lb_is STATE: host-list shows the reporter in STATE
    [ "$(sporectl_site --json host-list | jget "[h['state'] for h in r['hosts'] if h['name'] == 'lb1']")" = "['$1']" ]
}
check "a reporter silent for lost_after is lost, like any host" wait_until 40 lb_is lost
check "its next push makes it up again" \
    eval '[ "$(push 0)" = sent ] && wait_until 10 lb_is up'
check "with a host-back event" grep -q "host lb1 is back" <(sporectl_site events)
printf '[spored]\nshutdown_timeout=60\n' >"$SITE/spored.conf"
site_manager_kill KILL
check "spored restarts after kill -9, mid-cooldown" site_manager_start
check "with the same cooldown_until (from the state database)" \
    test "$(show 'r["service"]["cooldown_until"]')" = "$cooldown"
check "the load goes on" test "$(push 500)" = sent
check "the rule fires again after the restart" \
    wait_until 30 eval '[ "$(show "r[\"service\"][\"rules\"][0][\"fires\"]")" = True ]'
sleep 11 # two more evaluations (every 5 s)
check "but the cooldown holds it: still 2 clones, one scaled-up event" \
    test "$(show 'r["service"]["desired"]')/$(scaled_up)" = 2/1

# --- a clean stop: exit status 0 and, in sanitized builds, no leak report
pid=$(cat "$SITE/spored.pid")
kill -TERM "$pid"
wait "$pid"
check "spored stops cleanly on SIGTERM (exit status 0)" test $? = 0
rm -f "$SITE/spored.pid"
check "without sanitizer reports (leaks, memory errors)" \
    eval '! grep -q "Sanitizer" "$SITE/spored.log"'
finish
