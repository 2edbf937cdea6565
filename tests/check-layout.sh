#!/bin/sh
# check-layout.sh: the source layout rules a machine can check (STYLE.md,
# "meson with one static library per folder"): no meson.build in the tree
# declares more than one static_library().  TAP output.
set -u
root=${SPORE_SOURCE_ROOT:?run through meson}
n=0 failed=0
for f in $(cd "$root" && find . -name meson.build \
        -not -path './build*' -not -path './.*' | sort); do
    n=$((n + 1))
    count=$(grep -c '^[^#]*static_library(' "$root/$f")
    if [ "$count" -le 1 ]; then
        echo "ok $n - ${f#./}: $count static library"
    else
        echo "not ok $n - ${f#./}: $count static libraries, the rule is one per folder"
        failed=$((failed + 1))
    fi
done
echo "1..$n"
[ "$n" -gt 0 ] || { echo "no meson.build under '$root'" >&2; exit 1; }
[ "$failed" -eq 0 ]
