#!/bin/sh
# check-schema.sh XMLLINT SCHEMA DIR: validate every DIR/*.xml against SCHEMA
# with xmllint; fail if any does not validate or if DIR holds none.
# check-schema.sh --reject XMLLINT SCHEMA FILE...: the opposite, for
# examples that break a rule of syntax the schema states as well as the
# parser: fail if any of them validates.  TAP output.
set -u
expect=valid
if [ "$1" = --reject ]; then
    expect=invalid
    shift
fi
xmllint=$1 schema=$2
shift 2
if [ "$expect" = valid ]; then
    set -- "$1"/*.xml
    [ -e "$1" ] || shift
fi
n=0 failed=0
for f in "$@"; do
    n=$((n + 1))
    if "$xmllint" --noout --nonet --relaxng "$schema" "$f" 2>/dev/null; then
        result=valid
    else
        result=invalid
    fi
    if [ "$result" = "$expect" ]; then
        echo "ok $n - $(basename "$f") is $expect"
    else
        echo "not ok $n - $(basename "$f") is $result"
        [ "$expect" = valid ] &&
            "$xmllint" --noout --nonet --relaxng "$schema" "$f" 2>&1 |
            sed 's/^/# /'
        failed=$((failed + 1))
    fi
done
echo "1..$n"
[ "$n" -gt 0 ] || { echo "no examples given" >&2; exit 1; }
[ "$failed" -eq 0 ]
