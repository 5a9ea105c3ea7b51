#!/bin/sh
# abi/check.sh BASELINE CURRENT - the plugin ABI gate behind `make abi-check`.
#
# BASELINE is one of abi/bgserve-1.N.abi (make abi-check runs this once
# per baseline, so no member of any released minor changes), CURRENT the
# abidw description of the
# anchor library built from today's include/bgserve.h.  Two checks:
#  1. abidiff with abi/allowed-changes.abignore: the documented rule, any
#     change except members appended at the end of a public struct fails.
#  2. A strict prefix check, because libabigail 2.2's
#     has_data_member_inserted_at suppression also hides a member retyped
#     in place when the struct's size does not change (uint32_t -> float,
#     or a changed function-pointer signature in bgs_host_api): CURRENT is
#     cut back to the baseline's members (members at offsets past each
#     baseline struct's size are dropped, the size reset), and abidiff
#     without suppressions must then find no difference at all.
# (Renaming a member changes no binary layout, so neither check objects;
# docs/ABI.md forbids it for source compatibility.)
set -u
base=$1
cur=$2
here=$(dirname "$0")
status=0
ver=$(basename "$base" .abi | sed 's/^bgserve-//')

if ! abidiff --suppressions "$here/allowed-changes.abignore" "$base" "$cur"; then
    echo "abi-check: the public structs changed in a way ABI 1.x does not allow (see above)" >&2
    status=1
fi

cut="$cur.prefix"
awk -v structs="bgs_plugin bgs_route bgs_route_task bgs_task_def bgs_host_api" '
    function attr(line, name,    m) {
        if (match(line, name "=\x27[^\x27]*\x27")) {
            m = substr(line, RSTART + length(name) + 2, RLENGTH - length(name) - 3)
            return m
        }
        return ""
    }
    BEGIN { n = split(structs, list, " "); for (i = 1; i <= n; i++) watched[list[i]] = 1 }
    # First file: the baseline sizes.
    FNR == NR {
        if ($0 ~ /<class-decl / && watched[attr($0, "name")] && attr($0, "size-in-bits") != "")
            size[attr($0, "name")] = attr($0, "size-in-bits") + 0
        next
    }
    # Second file: print it, cut back to those sizes.
    /<class-decl / {
        name = attr($0, "name")
        if (watched[name] && (name in size) && $0 !~ /\/>[ \t]*$/) {
            inside = name
            sub("size-in-bits=\x27[0-9]*\x27", "size-in-bits=\x27" size[name] "\x27")
        }
    }
    inside != "" && /<data-member / {
        if (attr($0, "layout-offset-in-bits") + 0 >= size[inside]) { skipping = 1; next }
    }
    skipping { if ($0 ~ /<\/data-member>/) skipping = 0; next }
    inside != "" && /<\/class-decl>/ { inside = "" }
    { print }
' "$base" "$cur" > "$cut" || exit 2

if ! abidiff "$base" "$cut" >"$cut.diff"; then
    echo "abi-check: a member of ABI $ver was changed in place (only appending is allowed):" >&2
    cat "$cut.diff" >&2
    status=1
fi
[ "$status" = 0 ] && echo "abi-check: the public structs keep the ABI $ver layout"
exit "$status"
