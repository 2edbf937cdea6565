#!/bin/bash
# test-sporectl.sh SPORECTL: the command line of `sporectl` as an operator
# meets it: exit codes, where output goes, and its exact shape.  TAP output.
set -u
sporectl=$1
data=${SPORE_TEST_DATA:?run through meson}/manifests
tmp=$(mktemp -d)
manager_pid=
cleanup() {
    if [ -n "$manager_pid" ]; then
        kill "$manager_pid" 2>/dev/null
        wait "$manager_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
n=0 failed=0

check() { # check DESCRIPTION COMMAND...: passes when COMMAND succeeds
    local what=$1
    shift
    n=$((n + 1))
    if "$@"; then
        echo "ok $n - $what"
    else
        echo "not ok $n - $what"
        failed=$((failed + 1))
    fi
}

run() { # run ARGS...: run sporectl, leaving $rc, $tmp/out and $tmp/err
    "$sporectl" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

valid=$data/valid/web-full.xml
valid2=$data/valid/minimal.xml
invalid=$data/invalid/vcpus-zero.xml

run --help
check "--help exits 0 and lists validate" \
    test "$rc" -eq 0 -a -n "$(grep -w validate "$tmp/out")"
run validate --help
check "validate --help exits 0 and shows usage" \
    test "$rc" -eq 0 -a -n "$(grep 'Usage: sporectl validate' "$tmp/out")"
run help validate
check "help validate prints the same text" \
    test "$rc" -eq 0 -a -n "$(grep 'Usage: sporectl validate' "$tmp/out")"
run --version
check "--version exits 0" test "$rc" -eq 0 -a -n "$(grep '^sporectl ' "$tmp/out")"
run
check "no command is a usage error (2)" test "$rc" -eq 2
run frobnicate
check "an unknown command is a usage error (2)" \
    test "$rc" -eq 2 -a -n "$(grep "unknown command 'frobnicate'" "$tmp/err")"
run --frob validate "$valid"
check "an unknown global option is a usage error (2)" test "$rc" -eq 2
run validate
check "validate without FILE is a usage error (2)" test "$rc" -eq 2
run validate --strict "$valid"
check "an unknown validate option is a usage error (2)" test "$rc" -eq 2

run validate "$valid" "$valid2"
check "valid files exit 0" test "$rc" -eq 0
check "each valid file prints 'FILE: valid' on stdout" \
    test "$(cat "$tmp/out")" = "$valid: valid
$valid2: valid"
check "valid files print nothing on stderr" test ! -s "$tmp/err"

run validate "$valid" "$invalid"
check "one invalid file among valid ones exits 1" test "$rc" -eq 1
check "the valid one is still reported valid" \
    test "$(cat "$tmp/out")" = "$valid: valid"
check "the problem goes to stderr as FILE:LINE: message" \
    test "$(cat "$tmp/err")" = "$invalid:9: <vcpus> '0' must be an integer from 1 to 256"

printf '%s\n' '<?xml version="1.0"?>' \
    '<service xmlns="urn:spore:manifest:1" name="x_y">' \
    '  <image name="i"><origin url="http://127.0.0.1/i"/></image>' \
    '  <vm><vcpus>999</vcpus><memory>1</memory></vm>' \
    '</service>' >"$tmp/two.xml"
run validate "$tmp/two.xml"
check "all problems of a file are reported" \
    test "$rc" -eq 1 -a "$(wc -l <"$tmp/err")" -eq 2
check "problems carry their own lines" \
    test "$(cut -d: -f2 "$tmp/err" | tr '\n' ' ')" = "2 4 "

run validate /nonexistent/web.xml
check "an unreadable file exits 1 naming it" \
    test "$rc" -eq 1 -a -n "$(grep "^/nonexistent/web.xml: cannot open '/nonexistent/web.xml'" "$tmp/err")"

"$sporectl" validate - <"$valid" >"$tmp/out" 2>"$tmp/err"
rc=$?
check "'-' reads standard input" \
    test "$rc" -eq 0 -a "$(cat "$tmp/out")" = "-: valid"

run --json validate "$valid" "$invalid"
check "--json exits 1 when a file is invalid" test "$rc" -eq 1
check "--json prints parseable JSON with the problem's line" \
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert [x["valid"] for x in r] == [True, False], r
assert r[1]["problems"][0]["line"] == 9, r
' "$tmp/out"

run format "$data/valid/minimal.xml"
cp "$tmp/out" "$tmp/canonical.xml"
check "format prints canonical XML with defaults written out" \
    test "$rc" -eq 0 -a -n "$(grep '<scaling min="1" max="1" initial="1" cooldown="5m" stabilization="5m"/>' "$tmp/canonical.xml")"
run validate "$tmp/canonical.xml"
check "the canonical form validates" test "$rc" -eq 0
run format "$invalid"
check "format of an invalid manifest exits 1 with its problems" \
    test "$rc" -eq 1 -a -n "$(grep "$invalid:9:" "$tmp/err")"

# clone commands: usage errors are caught before libvirt or libguestfs
run clone-create --image nbd+unix:///x?socket=/tmp/s "$valid" 0
check "clone-create of a URL master without --image-id is a usage error" \
    test "$rc" -eq 2 -a -n "$(grep -- '--image-id' "$tmp/err")"
run clone-create --image /nonexistent.raw "$valid" 999
check "clone-create of an index beyond the service's max exits 2 naming it" \
    test "$rc" -eq 2 -a -n "$(grep "index '999' is not below" "$tmp/err")"
run clone-create --image /nonexistent.raw --image-format vmdk "$valid" 0
check "clone-create refuses an unknown image format" test "$rc" -eq 2
run clone-destroy --timeout soon web-0
check "clone-destroy refuses a malformed --timeout" test "$rc" -eq 2
run clone-create --help
check "clone-create --help explains idempotency" \
    test "$rc" -eq 0 -a -n "$(grep -i 'idempotent' "$tmp/out")"

# site manager commands: what can be checked without a manager
for c in submit service-list service-show service-delete scale rollback clone-list \
    host-list host-accept image-add image-list events; do
    run "$c" --help
    check "$c --help exits 0 and shows usage" \
        test "$rc" -eq 0 -a -n "$(grep "^Usage: sporectl $c" "$tmp/out")"
done
run help
check "help lists the site manager's commands" \
    test -n "$(grep -w submit "$tmp/out")" -a -n "$(grep -w events "$tmp/out")"
run -c /nonexistent.sock scale web x
check "scale with a non-numeric COUNT is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock scale -- web -1
check "scale with a negative COUNT is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock scale web
check "scale without COUNT is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock service-show
check "service-show without NAME is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock service-list extra
check "service-list with an operand is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock events --since soon
check "events with a malformed --since is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock submit --timeout 5 "$valid"
check "submit --timeout without --wait is a usage error (2)" test "$rc" -eq 2
run -c /nonexistent.sock submit "$invalid"
check "submit of an invalid manifest exits 1 with FILE:LINE: message" \
    test "$rc" -eq 1 -a "$(cat "$tmp/err")" = "$invalid:9: <vcpus> '0' must be an integer from 1 to 256"
check "submit of an invalid manifest does not contact the manager" \
    test -z "$(grep -i 'manager' "$tmp/err")"
run -c /nonexistent.sock submit /nonexistent/web.xml
check "submit of an unreadable file exits 1 naming it" \
    test "$rc" -eq 1 -a -n "$(grep "^/nonexistent/web.xml: cannot open" "$tmp/err")"
run -c /nonexistent.sock image-add --index /nonexistent.sporeidx img http://127.0.0.1/i
check "image-add of an unreadable index exits 1 naming it" \
    test "$rc" -eq 1 -a -n "$(grep "/nonexistent.sporeidx" "$tmp/err")"
without_manager() { # without_manager ARGS...: against a socket not there
    run -c /nonexistent.sock "$@"
    check "$1 without a manager exits 1 naming the socket and the site manager" \
        test "$rc" -eq 1 -a -n "$(grep "site manager at '/nonexistent.sock'" "$tmp/err")"
}
without_manager service-list
without_manager submit "$valid"
without_manager scale web 2
without_manager events --since 5
without_manager image-list
SPORE_ENDPOINT=/nonexistent-env.sock "$sporectl" host-list >"$tmp/out" 2>"$tmp/err"
rc=$?
check "\$SPORE_ENDPOINT names the manager's socket" \
    test "$rc" -eq 1 -a -n "$(grep "/nonexistent-env.sock" "$tmp/err")"
run --agent /nonexistent-agent.sock agent-image-list
check "the agent commands still name the host agent" \
    test "$rc" -eq 1 -a -n "$(grep "host agent at '/nonexistent-agent.sock'" "$tmp/err")"

# ---- the command table: one parser, options anywhere -------------------
head -c 200000 /dev/urandom >"$tmp/disk.raw"
(cd "$tmp" && "$sporectl" image-index disk.raw -o "$tmp/after.idx" >"$tmp/out" 2>"$tmp/err")
rc=$?
check "image-index FILE -o OUT: an option after the argument" \
    test "$rc" -eq 0 -a -s "$tmp/after.idx" -a ! -e "$tmp/disk.raw.sporeidx"
run image-index "$tmp/disk.raw" --output="$tmp/eq.idx"
check "--output=VALUE is the same option" \
    test "$rc" -eq 0 -a -s "$tmp/eq.idx"
check "both forms write the same index" cmp -s "$tmp/after.idx" "$tmp/eq.idx"
run image-index "$tmp/disk.raw" -o
check "an option without its value is a usage error (2)" \
    test "$rc" -eq 2 -a -n "$(grep "option '-o' needs its value, INDEX" "$tmp/err")"
run image-index "$tmp/disk.raw" --threads 0 -o "$tmp/t.idx"
check "an integer option out of its range names the range" \
    test "$rc" -eq 2 -a -n "$(grep "threads '0' is not an integer from 1 to 256" "$tmp/err")"
run validate "$valid" --json
check "--json after the arguments" \
    python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))[0]["valid"]' "$tmp/out"
run validate -- --json
check "'--' ends the options: '--json' after it is a FILE" \
    test "$rc" -eq 1 -a -n "$(grep "^--json: cannot open" "$tmp/err")"
run scale web 2 -c /nonexistent-after.sock
check "-c after the command and its arguments" \
    test "$rc" -eq 1 -a -n "$(grep "site manager at '/nonexistent-after.sock'" "$tmp/err")"
run service-list --connect=/nonexistent-eq.sock
check "--connect=SOCKET after the command" \
    test "$rc" -eq 1 -a -n "$(grep "'/nonexistent-eq.sock'" "$tmp/err")"
run agent-image-list --agent /nonexistent-agent2.sock
check "--agent after the command" \
    test "$rc" -eq 1 -a -n "$(grep "host agent at '/nonexistent-agent2.sock'" "$tmp/err")"
run submit --wait=yes "$valid"
check "a flag given a value is a usage error (2)" test "$rc" -eq 2
run clone-create "$valid" 0
check "a required option missing is a usage error naming it" \
    test "$rc" -eq 2 -a -n "$(grep "option '--image MASTER' is required" "$tmp/err")"
run format "$valid" "$valid2"
check "an argument too many is a usage error naming it" \
    test "$rc" -eq 2 -a -n "$(grep "unexpected argument '$valid2'" "$tmp/err")"
run scale web 4294967296
check "scale web 4294967296 names the real limit (1000 clones)" \
    test "$rc" -eq 2 -a -n "$(grep "from 0 to 1000 (the most clones a service may have)" "$tmp/err")"
run scale --help
check "scale --help prints the synopsis from the table" \
    test "$rc" -eq 0 -a "$(head -1 "$tmp/out")" = "Usage: sporectl scale [--wait] [--timeout SECONDS] NAME COUNT"
run help image-index
check "help lists each option with its short letter" \
    test -n "$(grep -- '-o, --output INDEX' "$tmp/out")"
"$sporectl" __table >"$tmp/table"
check "the table lists every command" \
    test "$(grep -c '^command ' "$tmp/table")" -eq "$(sed -n 's/^  \([a-z][a-z-]*\)  .*/\1/p' <("$sporectl" --help) | wc -l)"
same=1
for c in $(sed -n 's/^command \([^	]*\)	.*/\1/p' "$tmp/table"); do
    "$sporectl" help "$c" >"$tmp/h1" 2>&1
    "$sporectl" "$c" --help >"$tmp/h2" 2>&1
    "$sporectl" --help "$c" >"$tmp/h3" 2>&1
    if ! cmp -s "$tmp/h1" "$tmp/h2" || ! cmp -s "$tmp/h1" "$tmp/h3" ||
        [ "$(head -1 "$tmp/h1")" != "Usage: sporectl $(grep "^command $c	" "$tmp/table" | cut -f2)" ]; then
        echo "# help of '$c' differs" >&2
        same=0
    fi
done
check "help CMD, CMD --help and --help CMD print the table's synopsis" test "$same" -eq 1

# ---- the control socket: what the operator is told --------------------
mkdir "$tmp/dir.sock"
run -c "$tmp/dir.sock" service-list
check "-c naming a directory says it is not a socket" \
    test "$rc" -eq 1 -a -n "$(grep "'$tmp/dir.sock': not a socket" "$tmp/err")"
run -c "$valid" host-list
check "-c naming a regular file says it is not a socket" \
    test "$rc" -eq 1 -a -n "$(grep "not a socket" "$tmp/err")"

# ---- against a stand-in site manager -----------------------------------
sock=$tmp/m.sock
python3 "$(dirname "$0")/fake-manager.py" "$sock" "$tmp/requests" &
manager_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
ctl() { run -c "$sock" "$@"; }

ctl service-list -q
check "service-list -q prints the names, one a line" \
    test "$rc" -eq 0 -a "$(cat "$tmp/out")" = "web
db
stuck"
ctl service-list --name
check "service-list --name is -q" test "$(cat "$tmp/out" | wc -l)" -eq 3
# an active manager and its standbys: -c again, tried in order
run -c /nonexistent-standby.sock -c "$sock" service-list -q
check "-c twice: a socket that cannot be reached (a standby's) is passed over" \
    test "$rc" -eq 0 -a "$(head -n 1 "$tmp/out")" = web
SPORE_ENDPOINT="/nonexistent-standby.sock,$sock" "$sporectl" service-list -q >"$tmp/out" 2>"$tmp/err"
rc=$?
check "\$SPORE_ENDPOINT: a comma-separated list, the same" \
    test "$rc" -eq 0 -a "$(head -n 1 "$tmp/out")" = web
run -c /nonexistent-1.sock -c /nonexistent-2.sock service-list
check "none reachable: exit 1 naming each socket" \
    test "$rc" -eq 1 -a -n "$(grep "'/nonexistent-1.sock'.*; .*'/nonexistent-2.sock'" "$tmp/err")"
ctl clone-list web -q
check "clone-list SERVICE -q" test "$(cat "$tmp/out")" = "web-0
web-1"
ctl host-list -q
check "host-list -q" test "$(cat "$tmp/out")" = "hv-1
hv-2"
ctl image-list --name
check "image-list --name" test "$(cat "$tmp/out")" = "debian-12"
ctl service-list
check "service-list without -q is still the table" \
    test -n "$(grep -E '^ web +1 +debian-12 +2/2' "$tmp/out")"
check "a running count the manager does not know yet (null) shows as ?, the status unknown" \
    test -n "$(grep -E '^ stuck +1 +debian-12 +\?/1 +1 +4 +unknown' "$tmp/out")"
check "a service whose rollout failed says so in service-list" \
    test -n "$(grep -E '^ db +2 +debian-12 +1/1 +1 +4 +rollout-failed' "$tmp/out")"
ctl service-show stuck
check "service-show says the running count is not known yet" \
    grep -q "^Running: *not known yet" "$tmp/out"
ctl service-show db
check "service-show shows a failed rollout, its progress and why" \
    test -n "$(grep -E '^Rollout: +failed, generation 1 -> 2, started .*, took 42 s$' "$tmp/out")" \
    -a -n "$(grep -E '^Progress: +1 updated \(0 running\), 1 old \(1 running\); max-unavailable 0, max-surge 1$' "$tmp/out")" \
    -a -n "$(grep -E "^Failure: +a clone of generation 2 failed: hv-1: cannot write" "$tmp/out")"
ctl service-show web
check "service-show of a service that never rolled out has no Rollout line" \
    test "$rc" -eq 0 -a -z "$(grep '^Rollout:' "$tmp/out")"
ctl rollback web
check "rollback without an earlier generation exits 1 saying so" \
    test "$rc" -eq 1 -a -n "$(grep 'no earlier generation' "$tmp/err")"
ctl rollback db
check "rollback says from and to which generation" \
    test "$rc" -eq 0 -a "$(cat "$tmp/out")" = "db: rolling back from generation 2 to 1"
check "rollback sends the service's name" \
    test -n "$(grep '"cmd": "rollback", "name": "db"' "$tmp/requests")"
ctl rollback
check "rollback without NAME is a usage error (2)" test "$rc" -eq 2
ctl host-list --json
check "--json after a list command prints the reply" \
    python3 -c 'import json,sys; assert len(json.load(open(sys.argv[1]))["hosts"]) == 2' "$tmp/out"

ctl scale web 3 --timeout 5
check "scale --timeout without --wait is a usage error (2)" test "$rc" -eq 2
ctl scale web 4 --wait
check "scale --wait exits 0 once the clones run" test "$rc" -eq 0
check "scale --wait says it scaled, then converged" \
    test "$(cat "$tmp/out")" = "web: scaling to 4 clones
web: converged"
check "scale --wait shows the progress line of submit --wait" \
    test -n "$(grep '^web: placed 3/4, running 3/4, image 50% cached$' "$tmp/err")"
check "scale sent the count" \
    test -n "$(grep '"cmd": "scale", "name": "web", "count": 4' "$tmp/requests")"
ctl scale stuck 1 --wait --timeout 0
check "scale --wait --timeout: exit 3 when it expires" \
    test "$rc" -eq 3 -a -n "$(grep "stuck has not converged after 0 seconds" "$tmp/err")"
ctl --json scale web 2 --wait
check "scale --json --wait prints only the manager's reply on stdout" \
    python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["desired"] == 2' "$tmp/out"

# completion of names, asking the manager (before anything is deleted)
compl() { # compl WORD...: what the bash completion offers for the last WORD
    bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
        _sporectl; ((${#COMPREPLY[@]})) || exit 0
        printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' \
        _ "$(dirname "$0")/../../data/sporectl.bash-completion" "$@"
}
check "completion of a service name asks the manager" \
    test "$(compl "$sporectl" -c "$sock" service-show '')" = "db stuck web "
check "completion of a service name with a prefix" \
    test "$(compl "$sporectl" -c "$sock" scale w)" = "web "
check "completion of --service's value" \
    test "$(compl "$sporectl" --connect="$sock" events --service d)" = "db "
check "completion of a host name" \
    test "$(compl "$sporectl" -c "$sock" host-accept '')" = "hv-1 hv-2 "
check "completion of a clone name" \
    test "$(compl "$sporectl" -c "$sock" clone-destroy web-)" = "web-0 web-1 "
check "completion of clone-list's SERVICE" \
    test "$(compl "$sporectl" -c "$sock" clone-list s)" = "stuck "
"$sporectl" __complete 4 sporectl -c /nonexistent.sock service-show '' \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
check "name completion without a manager: exit 0, no names, nothing said" \
    test "$rc" -eq 0 -a "$(cat "$tmp/out")" = "words" -a ! -s "$tmp/err"
check "completion without a manager through bash is empty" \
    test -z "$(compl "$sporectl" -c /nonexistent.sock service-show '')"
check "completion of commands" \
    test "$(compl "$sporectl" --json service-l)" = "service-list "
check "completion of an option's choices" \
    test "$(compl "$sporectl" clone-create --image-format '')" = "qcow2 raw "
same=1
for c in $(sed -n 's/^command \([^	]*\)	.*/\1/p' "$tmp/table"); do
    want=$( (grep "^option $c " "$tmp/table" | cut -d' ' -f3
        grep '^global ' "$tmp/table" | cut -d' ' -f2) | sort | tr '\n' ' ')
    got=$(compl "$sporectl" "$c" --)
    if [ "$got" != "$want" ]; then
        echo "# completion of '$c --': '$got', the table: '$want'" >&2
        same=0
    fi
done
check "the completion offers each command's options as the table has them" \
    test "$same" -eq 1

ctl service-delete db --wait
check "service-delete --wait exits 0 once the service is gone" \
    test "$rc" -eq 0 -a -n "$(grep '^db: deleting, clones left: 1$' "$tmp/err")"
ctl service-list -q
check "the deleted service is gone" test -z "$(grep -x db "$tmp/out")"
ctl service-delete stuck --wait --timeout 0
check "service-delete --wait --timeout: exit 3 when it expires" \
    test "$rc" -eq 3 -a -n "$(grep "stuck has not gone after 0 seconds" "$tmp/err")"
ctl service-delete nosuch --wait
check "service-delete of an unknown service exits 1 with the manager's error" \
    test "$rc" -eq 1 -a -n "$(grep "no service 'nosuch'" "$tmp/err")"

# events --follow across a restart of the manager: it says so both ways,
# goes on after the last event printed, prints none twice
until_true() { # until_true TENTHS COMMAND...: COMMAND every 0.1 s
    local i
    for i in $(seq "$1"); do "${@:2}" && return 0; sleep 0.1; done
    return 1
}
lines_at_least() { [ "$(wc -l <"$1")" -ge "$2" ]; }
"$sporectl" -c "$sock" events --follow >"$tmp/follow.out" 2>"$tmp/follow.err" &
follow_pid=$!
check "events --follow prints the events there are" \
    until_true 100 lines_at_least "$tmp/follow.out" 3
kill "$manager_pid"; wait "$manager_pid" 2>/dev/null
check "... says when the manager goes away, and keeps following" \
    until_true 100 grep -q "site manager at '$sock' went away; waiting" "$tmp/follow.err"
check "... still running" kill -0 "$follow_pid"
: >"$tmp/requests.more" # the restarted manager has one event more
python3 "$(dirname "$0")/fake-manager.py" "$sock" "$tmp/requests" &
manager_pid=$!
check "... says when it is back, following from the last event printed" \
    until_true 100 grep -q "site manager at '$sock' is back; following after event 3" "$tmp/follow.err"
check "... and prints the new event" until_true 100 lines_at_least "$tmp/follow.out" 4
kill "$follow_pid"; wait "$follow_pid" 2>/dev/null
check "... and no event twice (4 lines, events 1 to 4)" \
    test "$(wc -l <"$tmp/follow.out")" -eq 4 -a -z "$(sort "$tmp/follow.out" | uniq -d)"

if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    chmod 0700 "$tmp"
    chmod 0600 "$sock"
    chmod 0711 "$tmp"
    setpriv --reuid=65534 --regid=65534 --clear-groups \
        "$sporectl" -c "$sock" service-list >"$tmp/out" 2>"$tmp/err"
    rc=$?
    check "permission denied names the control_group setting" \
        test "$rc" -eq 1 -a -n "$(grep 'Permission denied.*control_group' "$tmp/err")"
else
    n=$((n + 1))
    echo "ok $n - # SKIP permission denied needs root to drop to nobody"
fi

echo "1..$n"
[ "$failed" -eq 0 ]
