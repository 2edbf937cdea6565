#!/bin/sh
# check-doc-example.sh SPORECTL XMLLINT SCHEMA MANPAGE: the manifest in the
# EXAMPLE section of MANPAGE (between the .nf and .fi after ".SH EXAMPLE")
# must be accepted by `sporectl validate` and by xmllint against SCHEMA, so
# that the documented example cannot drift from what spore accepts.  TAP.
set -u
sporectl=$1 xmllint=$2 schema=$3 manpage=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0 failed=0

check() { # check DESCRIPTION COMMAND...: passes when COMMAND succeeds
    what=$1
    shift
    n=$((n + 1))
    if "$@"; then
        echo "ok $n - $what"
    else
        echo "not ok $n - $what"
        failed=$((failed + 1))
    fi
}

# Inside .nf the text is literal but for roff escapes: undo the ones a
# manifest may need (\e backslash, \- minus, \& zero-width guard).
sed -n '/^\.SH EXAMPLE/,/^\.SH /{
    /^\.SH EXAMPLE/,/^\.nf/d
    /^\.fi/,$d
    p
}' "$manpage" | sed -e 's/\\e/\x01/g' -e 's/\\-/-/g' -e 's/\\&//g' \
    -e 's/\x01/\\/g' >"$tmp/example.xml"

check "the EXAMPLE section holds a manifest" \
    grep -q '^<service xmlns="urn:spore:manifest:1"' "$tmp/example.xml"
validate() { "$sporectl" validate "$1" >&2; } # TAP owns stdout
check "sporectl validate accepts the example" validate "$tmp/example.xml"
check "the example satisfies the RelaxNG schema" \
    "$xmllint" --noout --nonet --relaxng "$schema" "$tmp/example.xml"

echo "1..$n"
[ "$failed" -eq 0 ]
