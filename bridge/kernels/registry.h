/*  registry - every kernel the service runs, by id, whichever API started it.

    Kernels that finish shutting down are reaped on the next loop turn, never inside
    their own callbacks (redis's freeClientAsync).
*/
#ifndef REGISTRY_H
#define REGISTRY_H

#include "kentry.h"
#include "../../sandbox/sbx.h"

typedef struct _registry_t registry_t;

typedef struct {
    json_t *env;                 //  environment added to every kernel (borrowed)
    const char *transport;       //  "tcp" or "ipc"
    const char *default_kernel;  //  kernelspec used when none is named
    bool autorestart;            //  restart kernels that die
    const char *signature_scheme;  //  "hmac-sha256" (NULL) or "hmac-sha512"
    size_t max_kernels;          //  kernels alive at once (0: no cap)
    int heartbeat_timeout_ms;    //  heartbeat silence that ends a kernel's runs (0: 30 s)
    uint64_t cull_idle_ms;       //  shut down kernels idle this long (0: never)
    bool cull_connected;         //  ... even those with clients connected
} registry_config_t;

//  How many clients are connected to a kernel (an API that has connections says; the
//  Jupyter API counts its channels connections): idle culling keeps connected kernels
//  unless cull_connected. NULL count: none are.
void registry_set_connection_counter(registry_t *self, size_t (*count)(kentry_t *entry, void *arg),
                                     void *arg);

//  Caller owns return value and must destroy it when done.
registry_t *registry_new(uv_loop_t *loop, const registry_config_t *config);
//  Kill every kernel at once and free everything. Nullifies *self_p.
void registry_destroy(registry_t **self_p);

//  Where a kernel runs: every kernel belongs to one sandbox (bridge/sandboxes/).
typedef struct {
    sbx_t *sbx;        //  the sandbox (borrowed; ready)
    const char *user;  //  the sandbox user it runs as; NULL: the agent's
    const char *cwd;   //  NULL: the user's home (the host: kbridge's cwd)
    json_t *env;       //  object of strings on top of the configured environment (borrowed)
    json_t *base_env;  //  the environment to start from (borrowed); NULL: kbridge's own
} registry_place_t;

//  Start a kernel from kernelspec name (NULL: the default) at place. Returns the new
//  entry (starting), or NULL with *err = KB_ENOTFOUND (no such kernelspec), KB_EINVAL
//  (bad cwd), KB_ESPAWN, KB_ECLOSED (shutting down, or the sandbox is gone), KB_ELIMIT
//  (max_kernels are alive).
kentry_t *registry_start(registry_t *self, const char *kernel_name, const registry_place_t *place,
                         int *err);
//  Warm pool. registry_prestart starts a kernel at place ahead of time: it is in no list
//  (registry_find, registry_list, registry_count, last activity), never culled, not counted
//  against max_kernels. registry_start takes a ready one that fits instead of starting
//  one (same sandbox, kernelspec and user; its cwd and environment are moved to place's
//  first, see kentry_claim), and it is then a kernel like any other. Returns as
//  registry_start (the entry belongs to the registry).
kentry_t *registry_prestart(registry_t *self, const char *kernel_name, const registry_place_t *place,
                            int *err);
//  Warm kernels of kernel_name (NULL: the default) in sbx (NULL: any), and of those how
//  many are ready (ready may be NULL).
size_t registry_pooled(const registry_t *self, const sbx_t *sbx, const char *kernel_name,
                       size_t *ready);
//  Whether a kernel someone uses is starting, restarting, busy or has runs queued: what
//  a warm start would compete with.
bool registry_working(const registry_t *self);
//  Warm kernels claimed since the start: all (kernel_name NULL), or of one kernelspec.
size_t registry_pool_claims(const registry_t *self);
size_t registry_pool_claims_of(const registry_t *self, const char *kernel_name);
//  A pool keeps warm kernels of kernel_name (the pool says so at its start): a start of
//  it that finds none fit counts as a miss in the pool's metrics.
int registry_pool_keeps(registry_t *self, const char *kernel_name);
//  Shut down warm kernels that are dead for good.
void registry_pool_prune(registry_t *self);
//  changed runs, from a later loop turn, when a warm kernel was claimed or went away.
void registry_set_pool_hook(registry_t *self, void (*changed)(void *arg), void *arg);

//  The kernel with this id, unless there is none or it is shutting down (the one way every
//  API looks kernels up).
kentry_t *registry_find(registry_t *self, const char *kernel_id);
//  A snapshot of the kernels that are not shutting down, in start order. Caller owns the
//  array (free()), not the entries.
size_t registry_list(registry_t *self, kentry_t ***entries);
//  The same, of one sandbox's kernels.
size_t registry_list_in(registry_t *self, const sbx_t *sbx, kentry_t ***entries);
//  Kill a sandbox's kernels at once (it is ending), before its sbx_t goes: their pending
//  executions fail now. Not from inside a kernel's own callbacks.
void registry_kill_in(registry_t *self, const sbx_t *sbx);
//  Kernels alive, shutting-down ones included.
size_t registry_count(const registry_t *self);
const char *registry_default_kernel(const registry_t *self);
size_t registry_max_kernels(const registry_t *self);
//  ISO-8601 time of the latest kernel activity, counting kernels since shut down ("" if
//  there was none). Borrowed.
const char *registry_last_activity(const registry_t *self);

//  Shut every kernel down gracefully; done runs once all have (or after 8 s, when the
//  stragglers are killed).
void registry_shutdown_all(registry_t *self, void (*done)(void *arg), void *arg);

#endif
