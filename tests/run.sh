#!/bin/sh
# Run each cmocka test program and close with one line counting the test
# cases of all programs: "tests: N passed, N failed" (CI reads it).
#
# A passing program prints one line; a failing one (a failed test, a crash,
# or running past its time limit) prints its whole output, then the command
# that reruns just its failing tests.  Exits non-zero when any test (or any
# program) failed.
#
#   TEST_TIMEOUT=SECONDS   limit per program (default 300; sanitizer builds
#                          are several times slower than a plain one)
#   TEST_VERBOSE=1         show every program's output, passing or not
#   TEST_EACH=1            run every test on its own, in a fresh process
#                          (shows that no test depends on the ones before it)
#   BGSERVE_TEST_FILTER=P  run only the tests whose name matches P ('*', '?'
#                          wildcards; read by tests/support/helpers.c)
limit=${TEST_TIMEOUT:-300}
pass=0; fail=0; bad=""
out=$(mktemp) || exit 1
trap 'rm -f "$out" "$out.names"' EXIT

# run PROGRAM [FILTER]: run it, count its tests, say how it went.
run() {
    t=$1
    start=$(date +%s)
    if [ -n "${2:-}" ]; then
        BGSERVE_TEST_FILTER=$2 timeout -k 10 "$limit" "./$t" >"$out" 2>&1
    else
        timeout -k 10 "$limit" "./$t" >"$out" 2>&1
    fi
    rc=$?
    secs=$(($(date +%s) - start))
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
    pass=$((pass + ${p:-0}))
    fail=$((fail + ${f:-0}))
    if [ "$rc" -eq 0 ]; then
        echo "ok   $t${2:+ $2} (${p:-0} tests, ${secs} s)"
        [ -n "${TEST_VERBOSE:-}" ] && cat "$out"
        return 0
    fi
    bad="$bad $t${2:+:$2}"
    # A program that died before cmocka's summary still counts.
    [ -z "$f" ] && fail=$((fail + 1))
    echo
    echo "== FAIL $t${2:+ $2} (exit $rc, ${secs} s)"
    cat "$out"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "== $t did not finish within $limit s (TEST_TIMEOUT) and was killed;"
        echo "   the last '[ RUN      ]' line above is the test that hung"
    fi
    # The failed tests cmocka listed, else the one running when it died.
    sed -n 's/^\[  FAILED  \] //p' "$out" | grep -v '^[0-9]* test(s)' | awk '!seen[$0]++' >"$out.names"
    [ -s "$out.names" ] || sed -n 's/^\[ RUN      \] //p' "$out" | tail -n 1 >"$out.names"
    while IFS= read -r n; do
        echo "   rerun: BGSERVE_BUILD=${BGSERVE_BUILD:-build} BGSERVE_TEST_FILTER='$n' ./$t"
    done <"$out.names"
    echo
}

for t in "$@"; do
    if [ -z "${TEST_EACH:-}" ]; then
        run "$t"
        continue
    fi
    # cmocka cannot list its tests: take the names from a full run, then
    # run each test alone.
    timeout -k 10 "$limit" "./$t" 2>/dev/null | sed -n 's/^\[ RUN      \] //p' >"$out.names"
    while IFS= read -r n; do
        run "$t" "$n" </dev/null
    done <<EOF
$(cat "$out.names")
EOF
done
echo
[ -n "$bad" ] && echo "failing programs:$bad"
echo "tests: $pass passed, $fail failed"
[ -z "$bad" ]
