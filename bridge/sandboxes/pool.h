/*  pool - warm kernels and sandboxes, started ahead of the requests that take them.

    Two pools, both filled in the background: kernels of the default kernelspec, and of
    any other kernelspec asked for, in the default sandbox (--pool-kernels), and sandboxes of each template with a kernel of the
    default kernelspec already started in them (--pool-sandboxes). A warm entry is nobody's:
    no API lists it, no client's limit counts it, nothing culls it or ends it on a timer.
    Taken, it becomes what a fresh start would have made (the registry moves a kernel's cwd
    and environment, the table gives a sandbox its settings) and is never given out again.

    Refills run one at a time, from a timer armed after the claim was answered, so that a
    warm start never competes with the request that emptied the pool; a failing start
    backs off (1 s doubling to 30 s) and says why in the log. Warm entries go at shutdown
    with their sandboxes' processes, uids, mounts, cgroups and directories.

    Owned by the sandboxes table (sandboxes.c); nobody else includes it.
*/
#ifndef POOL_H
#define POOL_H

#include "sandbox_int.h"

#include <jansson.h>
#include <stddef.h>

typedef struct _pool_t pool_t;

//  kernels: warm kernels to keep in the default sandbox; sandboxes: warm sandboxes per
//  template. Caller (the table) owns return value and must destroy it when done.
pool_t *pool_new(sandboxes_t *table, size_t kernels, size_t sandboxes);
//  Stop the warm sandboxes (removing their directories) and free. Nullifies *self_p.
void pool_destroy(pool_t **self_p);

//  Keep n warm kernels of kernelspec (NULL: the default; given twice, the last n counts)
//  in the default sandbox, refilled after the default kernelspec's. Returns 0 or KB_ENOMEM.
int pool_add_kernels(pool_t *self, const char *kernelspec, size_t n);
//  A template to keep sandboxes of, by the name warm ones carry until taken (copied).
int pool_add_template(pool_t *self, const char *name, const template_t *tmpl);
//  Fill from the next loop turn on.
void pool_start(pool_t *self);
//  Look again soon (a warm kernel was taken or went away).
void pool_kick(pool_t *self);

//  A running warm sandbox of tmpl, taken out of the pool (the caller gives it its
//  settings), preferring one whose kernel is ready; NULL if none.
sandbox_t *pool_take(pool_t *self, const template_t *tmpl);
//  A warm sandbox ended (its agent went away): forget it.
void pool_forget(pool_t *self, sandbox_t *sb);

//  {"kernels": {"kernelspec", "target", "warm", "ready", "claimed"} (the default
//  kernelspec; claimed: every warm kernel taken, the sandboxes' too), "kernelspecs":
//  {name: {"target", "warm", "ready", "claimed"}} (the default sandbox's pools; claimed:
//  that kernelspec's warm kernels taken anywhere), "sandboxes":
//  {"target", "templates": {name: {"warm", "ready"}}, "claimed"}, "refilling"}.
//  Caller owns return value.
json_t *pool_status(const pool_t *self);

//  Whether the pool keeps warm sandboxes at all (--pool-sandboxes > 0).
bool pool_targets_sandboxes(const pool_t *self);

#endif
