#!/bin/bash
# test-schedule.sh BUILD-DIR: spored applies a manifest's scheduled
# policies (docs/scaling.md), without libvirt or agents: what a policy
# changes is the service's desired count, and each firing is an event.
# A start time a few seconds ahead fires while spored runs.  Policies due
# while spored is down are reached without waiting, by starting it with
# the test-only clock offset SPORE_TEST_SCHEDULE_CLOCK_OFFSET: one due an
# hour later fires once on start (within its grace), is not fired again
# after a kill -9 and restart, and one due beyond its grace is reported
# missed and changes nothing.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
SITE=$(mktemp -d /tmp/spore-schedule.XXXXXX)
cleanup() { site_stop; rm -rf "$SITE"; }
trap cleanup EXIT
SITE_TAG=sc$$
. "$src/scripts/site-lib.sh"

jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }
desired() { sporectl_site --json service-show web | jget 'r["service"]["desired"]'; }
# events NUMBER KIND: how many events of KIND name schedule NUMBER
events() {
    sporectl_site --json events --service web |
        jget "sum(e['kind'] == '$2' and 'schedule $1 (' in e['message'] for e in r['events'])"
}
# restart_at OFFSET [SIGNAL]: stop spored (SIGTERM or SIGNAL) and start it
# with its scheduled policies OFFSET seconds ahead
restart_at() {
    site_manager_kill "${2:-TERM}"
    SPORE_TEST_SCHEDULE_CLOCK_OFFSET=$1 site_manager_start
}
utc_in() { date -u -d "@$(($(date +%s) + $1))" +%Y-%m-%dT%H:%M:%SZ; }

check "spored starts" site_manager_start
head -c $((1024 * 1024)) /dev/urandom >"$SITE/image.raw"
check "an image is registered" \
    quiet sporectl_site image-add img "file://$SITE/image.raw"

# 1: in 4 s; 2: in an hour; 3: in 90 min; 4: in 2.5 hours (default grace
# of 10 min each)
at2=$(date -u -d "$(utc_in 3600)" +%s)
# 5: daily, 12 hours from now in Berlin's wall clock: never due within the
# offsets below (at most 3 hours ahead)
h5=$(( (10#$(TZ=Europe/Berlin date +%H) + 12) % 24 ))
cat >"$SITE/web.xml" <<EOF
<service xmlns="urn:spore:manifest:1" name="web">
  <image name="img"><origin url="file://$SITE/image.raw"/></image>
  <vm><vcpus>1</vcpus><memory unit="MiB">64</memory></vm>
  <scaling min="1" max="5" initial="1" cooldown="2m">
    <schedule at="$(utc_in 4)" set="3"/>
    <schedule at="$(date -u -d "@$at2" +%Y-%m-%dT%H:%M:%SZ)" add="1"/>
    <schedule at="$(utc_in 5400)" remove="2"/>
    <schedule at="$(utc_in 9000)" set="5"/>
    <schedule cron="0 $h5 * * *" timezone="Europe/Berlin" set="2"/>
  </scaling>
</service>
EOF
check "sporectl validate accepts the schedules" \
    quiet "$BUILD/daemon/sporectl" validate "$SITE/web.xml"
check "submit the service (1 clone)" quiet sporectl_site submit "$SITE/web.xml"
check "schedule 1 fires while spored runs: 1 -> 3 clones" \
    wait_until 30 eval '[ "$(desired)" = 3 ]'
check "with a 'scheduled' event naming it, the count and the cooldown" \
    grep -q "service web: schedule 1 (at .*Z: set 3, grace 10m) due at .* UTC: 1 -> 3 clones; cooldown 120 s" \
    <(sporectl_site events --service web)

# service-show lists the schedules (docs/sporectl.1)
ctl_show() { sporectl_site service-show web; }
check "service-show has a 'Schedule N:' line for each of the 5 schedules" \
    test "$(ctl_show | grep -c '^Schedule [1-5]: ')" = 5
check "schedule 1: its start time, action and grace; it has fired: no further occurrence" \
    grep -Eq "^Schedule 1: +at [0-9T:-]+Z: set 3, grace 10m; no further occurrence$" <(ctl_show)
check "schedule 2: add 1, next at its start time" \
    grep -Eq "^Schedule 2: +at [0-9T:-]+Z: add 1, grace 10m; next $(date -d "@$at2" '+%Y-%m-%d %H:%M:%S')$" <(ctl_show)
check "--json: each schedule's action, amount, start time and next occurrence" \
    test "$(sporectl_site --json service-show web | jget "[(s['schedule'], s['action'], s['amount'], s['at'] == $at2, s['next']) for s in r['service']['schedules']][:2]")" = \
    "[(1, 'set', 3, False, None), (2, 'add', 1, True, $at2.0)]"
check "schedule 5: its recurrence, time zone and action, and the next occurrence" \
    grep -Eq "^Schedule 5: +cron '0 $h5 \* \* \*' Europe/Berlin: set 2, grace 10m; next [0-9-]+ [0-9:]+$" <(ctl_show)
next5_ok() {
    sporectl_site --json service-show web | python3 -c "
import json, sys, time, datetime, zoneinfo
s = json.load(sys.stdin)['service']['schedules'][4]
t = datetime.datetime.fromtimestamp(s['next'], zoneinfo.ZoneInfo('Europe/Berlin'))
ok = (s['cron'], s['timezone'], s['at']) == ('0 $h5 * * *', 'Europe/Berlin', None) \\
    and (t.hour, t.minute) == ($h5, 0) and 0 < s['next'] - time.time() < 86400
sys.exit(0 if ok else 1)"
}
check "--json: schedule 5's next occurrence is at $h5:00 in Berlin, within a day" next5_ok

check "spored restarts an hour and a minute later (clock offset)" \
    restart_at 3660
check "the offset is logged as for tests only" \
    grep -q "SPORE_TEST_SCHEDULE_CLOCK_OFFSET=3660: scheduled policies run 3660 s ahead of the clock (for tests only)" "$SITE/spored.log"
check "schedule 2, due while spored was down, fires on start: 3 -> 4" \
    wait_until 30 eval '[ "$(desired)" = 4 ]'
check "its event says it fired late" \
    grep -q "schedule 2 (.*add 1.*s late (the manager was not running): 3 -> 4 clones" \
    <(sporectl_site events --service web)

check "spored is killed (kill -9) and restarts after schedule 3 was due" \
    restart_at 5460 KILL
check "schedule 3 fires: 4 -> 2" wait_until 30 eval '[ "$(desired)" = 2 ]'
check "schedule 2 fired once in all (not again after the kill -9)" \
    test "$(events 2 scheduled)" = 1
check "and schedule 1 once" test "$(events 1 scheduled)" = 1

check "spored restarts 20 min after schedule 4 was due (grace 10 min)" \
    restart_at $((9000 + 1200))
check "schedule 4 is reported missed" \
    wait_until 30 eval '[ "$(events 4 schedule-missed)" = 1 ]'
check "saying why" \
    grep -q "schedule 4 (.*set 5.*) was due at .*, more than its grace ago (the manager was not running): skipped" \
    <(sporectl_site events --service web)
check "and changes nothing: still 2 clones" test "$(desired)" = 2
check "schedules 1 to 3 fired once each" \
    test "$(events 1 scheduled)$(events 2 scheduled)$(events 3 scheduled)" = 111

# --- a clean stop
pid=$(cat "$SITE/spored.pid")
kill -TERM "$pid"
wait "$pid"
check "spored stops cleanly on SIGTERM (exit status 0)" test $? = 0
rm -f "$SITE/spored.pid"
check "without sanitizer reports (leaks, memory errors)" \
    eval '! grep -q "Sanitizer" "$SITE/spored.log"'
finish
