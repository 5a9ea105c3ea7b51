#!/bin/sh
# Write a compile_commands.json (clangd, clang-tidy) to stdout from the
# flags the Makefile uses.  Arguments come in pairs: FLAGS "FILE FILE ...";
# every file of a pair is compiled with that pair's flags.
# Usage (from the Makefile): scripts/compdb.sh DIR CC FLAGS1 FILES1 [FLAGS2 FILES2 ...]
set -eu
dir=$1 cc=$2
shift 2
# JSON string body: backslash and double quote escaped.
esc() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }
edir=$(esc "$dir")
sep=""
echo "["
while [ $# -ge 2 ]; do
    flags=$1 files=$2
    shift 2
    for f in $files; do
        printf '%s  {"directory": "%s", "file": "%s",\n   "command": "%s"}' \
            "$sep" "$edir" "$(esc "$dir/$f")" "$(esc "$cc $flags -c -o /dev/null $f")"
        sep=",
"
    done
done
echo
echo "]"
