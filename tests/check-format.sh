#!/bin/sh
# check-format.sh: every C source and header of the tree is laid out as
# .clang-format says (clang-format --dry-run -Werror).  TAP output, one line
# per file; skips (77) where clang-format is not installed.
set -u
root=${SPORE_SOURCE_ROOT:?run through meson}
command -v clang-format >/dev/null || { echo "1..0 # SKIP clang-format not installed"; exit 77; }
cd "$root" || exit 1
n=0 failed=0
for f in $(git ls-files '*.c' '*.h' 2>/dev/null ||
           find . -name '*.[ch]' -not -path './build*' -not -path './.*'); do
    n=$((n + 1))
    if out=$(clang-format --dry-run -Werror "$f" 2>&1); then
        echo "ok $n - $f"
    else
        echo "not ok $n - $f: not as .clang-format lays it out (clang-format -i $f)"
        printf '%s\n' "$out" | head -n 6 | sed 's/^/# /'
        failed=$((failed + 1))
    fi
done
echo "1..$n"
[ "$n" -gt 0 ] || { echo "no C sources under '$root'" >&2; exit 1; }
[ "$failed" -eq 0 ]
