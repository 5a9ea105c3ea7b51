/*
 * anchor.c - the ABI anchor: a tiny shared library whose one exported
 * function takes every public struct of include/bgserve.h, so that its
 * debug information (read by libabigail's abidw) describes the whole
 * plugin ABI.  `make abi-check` compares that description with every
 * baseline abi/bgserve-1.N.abi; `make abi-baseline` writes the baseline of
 * the header's version (only when a new ABI minor is cut).  Never linked
 * into bgserve.
 */
#include <bgserve.h>

__attribute__((visibility("default"))) size_t bgs_abi_anchor(
    const bgs_plugin *plugin, const bgs_route *route,
    const bgs_route_task *route_task, const bgs_task_def *task,
    const bgs_host_api *api);

__attribute__((visibility("default"))) size_t bgs_abi_anchor(
    const bgs_plugin *plugin, const bgs_route *route,
    const bgs_route_task *route_task, const bgs_task_def *task,
    const bgs_host_api *api)
{
    return sizeof *plugin + sizeof *route + sizeof *route_task + sizeof *task +
           sizeof *api;
}
