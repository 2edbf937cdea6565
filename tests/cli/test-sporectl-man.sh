#!/bin/bash
# test-sporectl-man.sh SPORECTL MANPAGE: the man page sporectl(1) against
# sporectl's command table (`sporectl __table`): every command has a
# ".SS SYNOPSIS" line equal to the table's synopsis, so that each of its
# options is in the man page and no option is there that the table lacks;
# every .SS of COMMANDS is a command; the global options of the table are
# those of OPTIONS.  TAP output.
set -u
sporectl=$1 man=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0 failed=0

check() { # check DESCRIPTION COMMAND...
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

"$sporectl" __table >"$tmp/table" || { echo "Bail out! no table"; exit 1; }
# the .SS lines of COMMANDS, man escapes undone
sed -n '/^\.SH COMMANDS/,/^\.SH /s/^\.SS //p' "$man" | sed 's/\\-/-/g' \
    >"$tmp/man-synopses"
cut -f2 <(grep '^command ' "$tmp/table") >"$tmp/table-synopses"

while IFS= read -r synopsis; do
    check "man page has '.SS $synopsis'" grep -qxF -- "$synopsis" "$tmp/man-synopses"
done <"$tmp/table-synopses"
while IFS= read -r synopsis; do
    check "'.SS $synopsis' of the man page is a command of the table" \
        grep -qxF -- "$synopsis" "$tmp/table-synopses"
done <"$tmp/man-synopses"

# global options: "\-\-name" and "\-x" on the macro lines of OPTIONS
sed -n '/^\.SH OPTIONS/,/^\.SH /p' "$man" | grep '^\.' |
    grep -oE '\\-(\\-[a-z][a-z-]*|[a-zA-Z])\b' | sed 's/\\-/-/g' | sort -u \
    >"$tmp/man-globals"
grep '^global ' "$tmp/table" | cut -d' ' -f2- | tr ' ' '\n' | sort -u \
    >"$tmp/table-globals"
while IFS= read -r opt; do
    check "global option '$opt' is in OPTIONS" grep -qxF -- "$opt" "$tmp/man-globals"
done <"$tmp/table-globals"
while IFS= read -r opt; do
    check "'$opt' of OPTIONS is a global option of the table" \
        grep -qxF -- "$opt" "$tmp/table-globals"
done <"$tmp/man-globals"

echo "1..$n"
[ "$failed" -eq 0 ]
