#!/bin/bash
# test-sporectl.sh SPORECTL: the command line of `sporectl` as an operator
# meets it: exit codes, where output goes, and its exact shape.  TAP output.
set -u
sporectl=$1
data=${SPORE_TEST_DATA:?run through meson}/manifests
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
for c in submit service-list service-show service-delete scale clone-list \
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

echo "1..$n"
[ "$failed" -eq 0 ]
