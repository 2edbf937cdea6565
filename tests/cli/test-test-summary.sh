#!/bin/bash
# test-test-summary.sh PYTHON: scripts/test-summary, whose last line is the
# closing line CI reads: exactly "N passed, N failed".  TAP output.
set -u
python=$1
root=${SPORE_SOURCE_ROOT:?run through meson}
summary=$root/scripts/test-summary
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

run() { # run LOG...: run test-summary, leaving $rc, $tmp/out and $tmp/err
    "$python" "$summary" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

# meson's testlog.json: one JSON object per test executable
{
    echo '{"name": "tap", "result": "FAIL", "stdout": "ok 1 - a\nnot ok 2 - b\n# got 3, want 4\nok 3 - c # SKIP no kvm\nok 4 - d\n1..4\n", "stderr": "spored: gave up waiting\n"}'
    echo '{"name": "plain", "result": "OK", "stdout": ""}'
    echo '{"name": "skipped", "result": "SKIP", "stdout": ""}'
    echo '{"name": "crashed", "result": "ERROR", "stdout": "ok 1 - before the crash\nSegmentation fault\n"}'
} >"$tmp/mixed.json"
echo '{"name": "tap", "result": "OK", "stdout": "ok 1 - a\nok 2 - b\n1..2\n"}' \
    >"$tmp/green.json"

run "$tmp/mixed.json"
check "a failure exits 1" test "$rc" -eq 1
check "the last line is exactly 'N passed, N failed'" \
    test "$(tail -n 1 "$tmp/out")" = "4 passed, 2 failed"
check "the skipped count is on the line before it" \
    test "$(tail -n 2 "$tmp/out" | head -n 1)" = "2 skipped"
check "a failed TAP line is named with its test, above the closing lines" \
    grep -q '^FAILED tap ' <(head -n -2 "$tmp/out")
check "with its diagnostics and the tail of its stderr" \
    bash -c 'grep -q "^  not ok 2 - b\$" "$1" && grep -q "^  # got 3, want 4\$" "$1" &&
        grep -q "^    spored: gave up waiting\$" "$1"' - "$tmp/out"
check "a crash after the last TAP line is named, with its other output" \
    bash -c 'grep -q "^FAILED crashed " "$1" && grep -q "^    Segmentation fault\$" "$1"' \
    - "$tmp/out"
check "passing and skipped executables are not named" \
    test -z "$(grep -E '^FAILED (plain|skipped) ' "$tmp/out")"

run "$tmp/green.json" "$tmp/green.json"
check "all passing over two logs exits 0" test "$rc" -eq 0
check "and closes with their sum" \
    test "$(tail -n 1 "$tmp/out")" = "4 passed, 0 failed"
check "naming no failure" test -z "$(grep '^FAILED' "$tmp/out")"

run "$tmp/green.json" "$tmp/missing.json"
check "an unreadable log counts as a failure, named on stderr" \
    test "$rc" -eq 1 -a -n "$(grep "cannot read '$tmp/missing.json'" "$tmp/err")"
check "and the closing line is still last" \
    test "$(tail -n 1 "$tmp/out")" = "2 passed, 1 failed"

# .ci/run must print nothing after test-summary's closing line
check ".ci/run ends with test-summary's output" \
    test -z "$(sed -n '/scripts\/test-summary/,$p' "$root/.ci/run" |
        grep -Ev 'scripts/test-summary|testlog\.json|^exit |^$')"

echo "1..$n"
[ "$failed" -eq 0 ]
