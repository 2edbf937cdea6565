#!/bin/sh
# check-manpages.sh [PAGE=BINARY]...: every man page of docs/ (*.1, *.5,
# *.8) renders without a warning (groff -ww -man) and through man -l; and
# for each PAGE=BINARY pair, every long option BINARY --help prints
# appears in PAGE.  TAP output; skips (77) where groff is not installed
# (Debian: groff-base).  sporectl(1)'s commands are checked by
# tests/cli/test-sporectl-man.sh.
set -u
root=${SPORE_SOURCE_ROOT:?run through meson}
command -v groff >/dev/null || { echo "1..0 # SKIP groff not installed"; exit 77; }
n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
notok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
have_man=0
command -v man >/dev/null && have_man=1
for page in "$root"/docs/*.[158]; do
    [ -e "$page" ] || continue
    name=docs/$(basename "$page")
    if out=$(groff -ww -man -Tutf8 "$page" 2>&1 >/dev/null) && [ -z "$out" ]; then
        ok "$name: groff -ww renders it without warnings"
    else
        notok "$name: groff -ww"
        printf '%s\n' "$out" | head -n 10 | sed 's/^/# /'
    fi
    if [ "$have_man" -eq 0 ]; then
        skip "$name: man -l" "man not installed"
    elif out=$(MANWIDTH=80 MAN_KEEP_FORMATTING= man -l "$page" 2>&1 >/dev/null) && [ -z "$out" ]; then
        ok "$name: man -l renders it"
    else
        notok "$name: man -l"
        printf '%s\n' "$out" | head -n 10 | sed 's/^/# /'
    fi
done
# The page's source with its escapes for hyphens and fonts undone, so that
# \fB\-\-state\-dir\fP reads --state-dir.
plain() { sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\f(..//g' "$1"; }
for pair in "$@"; do
    page=${pair%%=*}
    bin=${pair#*=}
    name=docs/$(basename "$page")
    if ! help=$("$bin" --help 2>&1); then
        notok "$name: $(basename "$bin") --help failed"
        continue
    fi
    opts=$(printf '%s\n' "$help" |
        sed -n 's/^ *\(-[A-Za-z], \)\{0,1\}\(--[A-Za-z0-9][A-Za-z0-9-]*\).*/\2/p' |
        sort -u)
    if [ -z "$opts" ]; then
        notok "$name: no long option found in $(basename "$bin") --help"
        continue
    fi
    text=$(plain "$page")
    for opt in $opts; do
        [ "$opt" = --help ] && continue
        if printf '%s\n' "$text" | grep -q -e "$opt\([^A-Za-z0-9-]\|\$\)"; then
            ok "$name: documents $opt"
        else
            notok "$name: does not document $opt (in $(basename "$bin") --help)"
        fi
    done
done
echo "1..$n"
[ "$failed" -eq 0 ]
