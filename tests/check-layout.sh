#!/bin/sh
# check-layout.sh [SPORED [SPORE-AGENT]]: the source layout rules a machine
# can check
# (STYLE.md, "meson with one static library per folder"): no meson.build in
# the tree declares more than one static_library(); and the site manager
# SPORED (the built binary, given by tests/meson.build) links neither
# libvirt nor libguestfs: it manages hosts, the agents touch libvirt; each
# of daemon/'s programs (manager/, agent/, ctl/) is one static library of
# its own; and nothing in the repository points at files outside it (the
# repository explains itself: docs/architecture.md); and each daemon loads
# one libcurl and one TLS stack (GnuTLS, which libvirt's libcurl uses too),
# never OpenSSL's libssl beside it.  TAP output.
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
for d in daemon/manager daemon/agent daemon/ctl; do
    n=$((n + 1))
    count=$(grep -c '^[^#]*static_library(' "$root/$d/meson.build" 2>/dev/null)
    if [ "${count:-0}" -eq 1 ]; then
        echo "ok $n - $d is one static library"
    else
        echo "not ok $n - $d: ${count:-no} static libraries, want its own one"
        failed=$((failed + 1))
    fi
done
n=$((n + 1))
outside='\.\./'shared # (split, or this file would name it)
refs=$(cd "$root" && { git ls-files 2>/dev/null || find . -type f -not -path './build*' -not -path './.git/*'; } |
    xargs grep -IlE "$outside" 2>/dev/null)
if [ -z "$refs" ]; then
    echo "ok $n - no file refers to documents outside the repository"
else
    echo "not ok $n - these refer to documents outside the repository: $(echo $refs)"
    failed=$((failed + 1))
fi
if [ -n "${1:-}" ]; then
    libs=$(ldd "$1" 2>&1)
    for lib in libvirt libguestfs; do
        n=$((n + 1))
        if printf '%s\n' "$libs" | grep -q "^[[:space:]]*$lib[.-]"; then
            echo "not ok $n - spored links $lib"
            failed=$((failed + 1))
        else
            echo "ok $n - spored does not link $lib"
        fi
    done
fi
for bin in "$@"; do
    libs=$(ldd "$bin" 2>&1)
    n=$((n + 1))
    curls=$(printf '%s\n' "$libs" | grep -c '^[[:space:]]*libcurl[.-]')
    if [ "$curls" -eq 1 ] && ! printf '%s\n' "$libs" | grep -q '^[[:space:]]*libssl\.'; then
        echo "ok $n - ${bin##*/} loads one libcurl and no libssl"
    else
        echo "not ok $n - ${bin##*/} loads $curls libcurl and $(printf '%s\n' "$libs" | grep -c '^[[:space:]]*libssl\.') libssl: one TLS stack wanted"
        failed=$((failed + 1))
    fi
done
echo "1..$n"
[ "$n" -gt 0 ] || { echo "no meson.build under '$root'" >&2; exit 1; }
[ "$failed" -eq 0 ]
