#!/bin/sh
# check-schema.sh XMLLINT SCHEMA DIR: validate every DIR/*.xml against SCHEMA
# with xmllint; fail if any does not validate or if DIR holds none.
set -u
xmllint=$1 schema=$2 dir=$3
n=0 failed=0
for f in "$dir"/*.xml; do
    [ -e "$f" ] || continue
    n=$((n + 1))
    if "$xmllint" --noout --nonet --relaxng "$schema" "$f"; then
        echo "ok $n - $(basename "$f")"
    else
        echo "not ok $n - $(basename "$f")"
        failed=$((failed + 1))
    fi
done
echo "1..$n"
[ "$n" -gt 0 ] || { echo "no examples in $dir" >&2; exit 1; }
[ "$failed" -eq 0 ]
