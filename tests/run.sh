#!/bin/sh
# Run each cmocka test program, show its output, and close with one line
# counting the test cases of all programs: "tests: N passed, N failed".
# Exits non-zero when any test (or any program) failed.
pass=0; fail=0; bad=""
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT
for t in "$@"; do
    echo "== $t"
    "./$t" >"$out" 2>&1
    rc=$?
    cat "$out"
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    pass=$((pass + ${p:-0}))
    fail=$((fail + ${f:-0}))
    if [ "$rc" -ne 0 ]; then
        bad="$bad $t"
        # A program that died before cmocka's summary still counts.
        [ -z "$f" ] && fail=$((fail + 1))
    fi
done
echo
[ -n "$bad" ] && echo "failing programs:$bad"
echo "tests: $pass passed, $fail failed"
[ -z "$bad" ]
