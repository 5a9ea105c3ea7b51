#!/bin/sh
# check-includes.sh - fail when the rooms of cmd/bgserve/ depend on each
# other in a cycle, printing each cycle as a chain with the reason for
# every link.  `make test` runs it.
#
#   sh scripts/check-includes.sh [SRCDIR [OBJDIR]]
#
# A room is a file name without its extension (tasks.c and tasks.h are the
# room "tasks"; a header without a .c, like request.h, is a room of its
# own).  Room A depends on room B when A.c or A.h includes "B.h", or, when
# OBJDIR holds the compiled objects, when A.o uses a symbol B.o defines
# (that catches a prototype declared in another room's header, e.g. a
# function of hostapi.c declared in generation.h).  main depends on
# everything and nothing depends on it, so it is left out.
#
# It also keeps the walls of the house (/work/shared/ARCHITECTURE.md):
#   - only http includes <microhttpd.h>;
#   - the rooms under the task engine and the router never reach http,
#     directly or through another room;
#   - the router stays pure: it depends on util and nothing else;
#   - with OBJDIR, every exported name carries its room's prefix (below).
#
# Exit status: 0 all well, 1 a cycle or a breached wall (printed), 2 usage.
src=${1:-cmd/bgserve}
obj=${2:-}
[ -d "$src" ] || { echo "check-includes: no directory '$src'" >&2; exit 2; }
tab=$(printf '\t')
edges=$(mktemp) || exit 2
trap 'rm -f "$edges" "$edges.defs" "$edges.uses"' EXIT

# "FROM<TAB>TO<TAB>REASON" for every include of a header of SRCDIR.
for f in "$src"/*.c "$src"/*.h; do
    [ -f "$f" ] || continue
    file=${f##*/}
    from=${file%.*}
    [ "$from" = main ] && continue
    sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"/]*\)\.h".*/\1/p' "$f" |
    while read -r to; do
        [ "$to" != "$from" ] && [ -f "$src/$to.h" ] &&
            printf '%s\t%s\t%s includes %s.h\n' "$from" "$to" "$file" "$to"
    done
done >>"$edges"

# The same from the objects: A.o uses a symbol defined in B.o.
if [ -n "$obj" ]; then
    for o in "$obj"/*.o; do
        [ -f "$o" ] || { echo "check-includes: no objects in '$obj'" >&2; exit 2; }
        m=${o##*/}; m=${m%.o}
        [ "$m" = main ] && continue
        [ -f "$src/$m.c" ] || continue # left over from a file that is gone
        nm -g --defined-only "$o" | awk -v m="$m" 'NF == 3 { print $3 "\t" m }' >>"$edges.defs"
        nm -u "$o" | awk -v m="$m" '{ print $NF "\t" m }' >>"$edges.uses"
    done
    sort -o "$edges.defs" "$edges.defs"
    sort -o "$edges.uses" "$edges.uses"
    join -t "$tab" "$edges.uses" "$edges.defs" |
        awk -F '\t' '$2 != $3 { printf "%s\t%s\t%s.o uses %s (%s.o)\n", $2, $3, $2, $1, $3 }' >>"$edges"
fi

bad=0
# Exported names carry their room's prefix: ROOM.o defines ROOM_* only.  A
# room split into files around one header without a .c of its own (tasks.h
# over tasks_runs.c, tasks_group.c, ...) may use that header's prefix.
# One kept exception: util's x-allocators (xmalloc, xstrdup: the name says
# "aborts on failure").
if [ -n "$obj" ]; then
    while IFS="$tab" read -r sym m; do
        case $sym in "$m" | "${m}"_*) continue ;; esac
        head=${m%%_*}
        if [ "$head" != "$m" ] && [ -f "$src/$head.h" ] && [ ! -f "$src/$head.c" ]; then
            case $sym in "${head}"_*) continue ;; esac
        fi
        case $m:$sym in util:x[a-z]*) continue ;; esac
        echo "check-includes: $m.o exports $sym: name it ${m}_... (the room's prefix) or make it static"
        bad=1
    done <"$edges.defs"
fi

for f in "$src"/*.c "$src"/*.h; do
    case ${f##*/} in http.c) continue ;; esac
    if grep -q '^[[:space:]]*#[[:space:]]*include[[:space:]]*<microhttpd.h>' "$f"; then
        echo "check-includes: ${f##*/} includes <microhttpd.h>: only http.c may; add what it needs to http.h"
        bad=1
    fi
done

sort -u "$edges" | awk -F '\t' '
function dfs(u,    i, v, k, chain, why) {
    colour[u] = 1
    stack[++sp] = u
    for (i = 1; i <= nout[u]; i++) {
        v = out[u, i]
        if (colour[v] == 1) {
            for (k = sp; k > 0 && stack[k] != v; k--)
                ;
            chain = ""; why = ""
            for (; k <= sp; k++) {
                chain = chain stack[k] " -> "
                why = why "  " stack[k] " -> " (k < sp ? stack[k + 1] : v) ": " \
                      reason[stack[k], (k < sp ? stack[k + 1] : v)] "\n"
            }
            printf "check-includes: dependency cycle in %s: %s%s\n%s", src, chain, v, why
            cycles++
        } else if (colour[v] == 0) {
            dfs(v)
        }
    }
    sp--
    colour[u] = 2
}
{
    if (!(($1, $2) in reason)) {
        out[$1, ++nout[$1]] = $2
        reason[$1, $2] = $3
        shown[$1, $2] = 1
    } else if (shown[$1, $2] < 3) {
        reason[$1, $2] = reason[$1, $2] "; " $3
        shown[$1, $2]++
    }
    if (!($1 in seen)) { seen[$1] = 1; order[++nnodes] = $1 }
}
# The first path from u to target (rooms joined by " -> "), or "".
function path(u, target,    i, v, rest) {
    if (u == target)
        return u
    if (visited[u]++)
        return ""
    for (i = 1; i <= nout[u]; i++) {
        rest = path(out[u, i], target)
        if (rest != "")
            return u " -> " rest
    }
    return ""
}
END {
    for (n = 1; n <= nnodes; n++)
        if (colour[order[n]] == 0)
            dfs(order[n])
    split(walled, w, " ")
    for (n = 1; n in w; n++) {
        split("", visited)
        p = path(w[n], "http")
        if (p != "") {
            printf "check-includes: %s reaches http (%s): tasks and the rooms under them never call http\n", w[n], p
            breaches++
        }
    }
    for (i = 1; i <= nout["router"]; i++)
        if (out["router", i] != "util") {
            printf "check-includes: router depends on %s (%s): the router stays pure\n", out["router", i], reason["router", out["router", i]]
            breaches++
        }
    if (cycles) {
        print "check-includes: a room may only depend on rooms below it; move the shared"
        print "  declaration down, or pass what the lower room needs in (a callback or a value)"
    }
    exit cycles || breaches
}' src="$src" walled="tasks queue workers sched services router" || bad=1
exit $bad
