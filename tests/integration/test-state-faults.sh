#!/bin/bash
# test-state-faults.sh BUILD-DIR: spored's state layer when its database
# fails (no libvirt needed).  For a database locked by another connection,
# a full disk (a small tmpfs mounted here) and a read-only database file:
# the command gets an error (sporectl exits 1 with the message), nothing
# half-written remains (checked with sqlite3), and spored keeps running and
# serves the next request.  Then the errors of unknown services and a
# scale that changes nothing.  TAP output.
set -u
. "$(dirname "$0")/lib.sh"
BUILD=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
command -v sqlite3 >/dev/null || skip_all "sqlite3 (the CLI) is not installed"
SITE=$(mktemp -d /tmp/spore-faults.XXXXXX)
mounted=""
holder=""
cleanup() {
    [ -n "$holder" ] && kill "$holder" 2>/dev/null
    site_stop
    [ -n "${ro:-}" ] && umount "$db" 2>/dev/null
    [ -n "$mounted" ] && umount "$SITE/manager"
    rm -rf "$SITE"
}
trap cleanup EXIT
SITE_TAG=f$$
. "$src/scripts/site-lib.sh"

# the state directory on a small tmpfs of its own, when this may mount
mkdir -p "$SITE/manager"
if mount -t tmpfs -o size=2m,mode=0700 spore-faults "$SITE/manager" 2>/dev/null; then
    mounted=yes
fi
db=$SITE/manager/spored.db
count() { sqlite3 "file:$db?mode=ro" "SELECT COUNT(*) FROM $1"; }
alive() { kill -0 "$(cat "$SITE/spored.pid")"; }
jget() { python3 -c "import json,sys; r=json.load(sys.stdin); print($1)"; }

check "spored starts" site_manager_start
check "its database is 0600" test "$(stat -c %a "$db")" = 600
head -c $((1024 * 1024)) /dev/urandom >"$SITE/image.raw"
check "an image is registered" quiet sporectl_site image-add img "file://$SITE/image.raw"
mf() { # mf NAME: a manifest of service NAME
    cat <<EOM
<service xmlns="urn:spore:manifest:1" name="$1">
  <image name="img"><origin url="file://$SITE/image.raw"/></image>
  <vm><vcpus>1</vcpus><memory unit="MiB">64</memory></vm>
  <scaling min="1" max="3" initial="2"/>
</service>
EOM
}
mf web >"$SITE/web.xml"
mf db >"$SITE/db.xml"

# --- a database locked by another connection (BEGIN EXCLUSIVE)
python3 - "$db" "$SITE/locked" "$SITE/release" <<'EOP' &
import os, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.1)
c.execute("ROLLBACK")
EOP
holder=$!
check "another connection holds the database (BEGIN EXCLUSIVE)" \
    wait_until 40 test -e "$SITE/locked"
sporectl_site submit "$SITE/web.xml" >"$SITE/out" 2>"$SITE/err"
check "submit fails (exit status 1)" test $? = 1
check "saying the database is locked" grep -q "database.*locked" "$SITE/err"
check "not 'created'" eval '! grep -q created "$SITE/out"'
touch "$SITE/release"
wait "$holder"
holder=""
check "nothing of the service was written" test "$(count services)" = 0
check "spored still runs" alive
check "and, the lock released, serves the same submit" \
    grep -q "created" <(sporectl_site submit "$SITE/web.xml")
check "which is stored" test "$(count services)" = 1
check "with its clone rows, once a pass ran" \
    wait_until 20 eval '[ "$(count clones)" = 2 ]'

# --- a full disk: a transaction bigger than the free space
if [ -n "$mounted" ]; then
    truncate -s 64M "$SITE/big.raw"
    "$BUILD/daemon/sporectl" image-index --chunk-size 4K -o "$SITE/big.idx" \
        "$SITE/big.raw" >/dev/null 2>&1
    events=$(count events)
    dd if=/dev/zero of="$SITE/manager/fill" bs=64k 2>/dev/null
    sporectl_site image-add --index "$SITE/big.idx" big "file://$SITE/big.raw" \
        >/dev/null 2>"$SITE/err"
    check "on a full disk, image-add of a large index fails (exit status 1)" test $? = 1
    check "saying the disk is full" grep -q "database.*full" "$SITE/err"
    check "nothing of it was written" \
        test "$(sqlite3 "file:$db?mode=ro" "SELECT COUNT(*) FROM images WHERE name = 'big'")" = 0
    check "not even its event" \
        test "$(sqlite3 "file:$db?mode=ro" "SELECT COUNT(*) FROM events WHERE kind = 'image-added' AND message LIKE 'image big %'")" = 0
    check "spored still runs" alive
    rm -f "$SITE/manager/fill"
    check "with room again, the same image-add works" \
        grep -q "big: added" <(sporectl_site image-add --index "$SITE/big.idx" big "file://$SITE/big.raw")
    check "and is stored" \
        test "$(sqlite3 "file:$db?mode=ro" "SELECT COUNT(*) FROM images WHERE name = 'big'")" = 1
    check "events went on" test "$(count events)" -gt "$events"
else
    ok "# SKIP a full disk: cannot mount a tmpfs here"
fi

# --- a read-only database file (bind-mounted read-only over itself):
# reads are served, writes refused
if [ -n "$mounted" ]; then
    site_manager_kill TERM
    mount --bind "$db" "$db" && mount -o remount,bind,ro "$db" && ro=yes || ro=""
fi
if [ -n "${ro:-}" ]; then
    check "spored starts on a read-only database" site_manager_start
    check "and lists the services" grep -q web <(sporectl_site service-list)
    sporectl_site submit "$SITE/db.xml" >/dev/null 2>"$SITE/err"
    check "a submit fails (exit status 1)" test $? = 1
    check "saying the database is read-only" grep -q "database.*readonly" "$SITE/err"
    check "nothing of it was written" test "$(count services)" = 1
    check "spored still runs" alive
    check "and serves the next request" grep -q web <(sporectl_site service-list)
    site_manager_kill TERM
    umount "$db"
else
    ok "# SKIP a read-only database: cannot bind-mount here"
fi

# --- clone-list and events of an unknown service are errors
check "spored starts again" site_manager_start
sporectl_site clone-list nothing >/dev/null 2>"$SITE/err"
check "clone-list --service of an unknown service fails" test $? = 1
check "saying so" grep -q "no such service 'nothing'" "$SITE/err"
sporectl_site events --service nothing >/dev/null 2>"$SITE/err"
check "so does events --service" test $? = 1
check "saying so" grep -q "no such service 'nothing'" "$SITE/err"
check "a scale to the desired count changes nothing, not the cooldown" \
    eval '[ "$(sporectl_site --json scale web 2 | jget "r[\"outcome\"]")" = unchanged ]'
check "no cooldown was started" \
    eval '[ "$(sporectl_site --json service-show web | jget "r[\"service\"][\"cooldown_until\"]")" = 0.0 ]'
check "a real scale does" \
    eval '[ "$(sporectl_site --json scale web 3 | jget "r[\"outcome\"]")" = scaled ]'
check "spored exits cleanly on SIGTERM" eval 'site_manager_kill TERM; ! test -e "$SITE/spored.pid"'
finish
