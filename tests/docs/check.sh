#!/bin/sh
# Build every C example of the docs as a plugin and validate it with
# bgserve --check.  An example is a ```c block whose first line is
# "/* NAME.c */"; it is written to $BUILD/docs/NAME.c.  An example named
# test_NAME.c is a test written with the testing library instead: it is
# built against $BUILD/lib (with the build's sanitizer) and run with the
# plugin NAME.so, which the docs must also show.
# Usage: tests/docs/check.sh BUILD_DIR  (prints one line per example)
set -eu
build=${1:-build}
out="$build/docs"
mkdir -p "$out"
rm -f "$out"/*.c
for md in README.md docs/*.md; do
    [ -f "$md" ] || continue
    awk -v dir="$out" -v src="$md" '
        /^```c[ \t]*$/ { inblock = 1; file = ""; next }
        /^```[ \t]*$/ && inblock { inblock = 0; if (file) close(file); file = ""; next }
        inblock && file == "" {
            if (match($0, /^\/\* [A-Za-z0-9_]+\.c \*\/$/)) {
                name = substr($0, 4, length($0) - 6)
                file = dir "/" name
                print "/* extracted from " src " */" > file
            } else { inblock = 0 }
        }
        inblock && file != "" { print >> file }
    ' "$md"
done
count=0
for c in "$out"/*.c; do
    [ -f "$c" ] || continue
    case "${c##*/}" in test_*) continue ;; esac
    so="${c%.c}.so"
    ${CC:-cc} -std=c11 -Wall -Wextra -Werror -Iinclude -fPIC -fvisibility=hidden \
        -shared -Wl,-z,defs -o "$so" "$c"
    "$build/bgserve" --check "$so" >/dev/null
    echo "example ok: $c"
    count=$((count + 1))
done
san=""
case "$build" in
*san-*) san="-fsanitize=$(echo "${build##*san-}" | tr - ,) -fno-omit-frame-pointer" ;;
esac
for c in "$out"/test_*.c; do
    [ -f "$c" ] || continue
    name=${c##*/test_}
    so="$out/${name%.c}.so"
    [ -f "$so" ] || { echo "docs: ${c##*/} tests ${name%.c}.so, but no /* ${name} */ example shows it" >&2; exit 1; }
    # shellcheck disable=SC2086
    ${CC:-cc} -std=c11 -Wall -Wextra -Werror $san -Itesting -o "${c%.c}" "$c" \
        -L"$build/lib" -Wl,-rpath,"$PWD/$build/lib" -lbgserve-testing $(pkg-config --libs cmocka)
    "${c%.c}" "$so" >"${c%.c}.log" 2>&1 || { cat "${c%.c}.log" >&2; exit 1; }
    echo "example ok: $c (ran against ${so##*/})"
    count=$((count + 1))
done
echo "examples: $count"
[ "$count" -gt 0 ]
