/*  sandboxes - every sandbox the service runs, by id, whichever API made it: their
    lifecycle (create, end at the end time, pause, resume), their persistence across
    kbridge restarts, and the default sandbox.

    A sandbox (sandbox/sbx.h) is where kernels and processes run. The service adds what
    every API reports about it: a template, metadata, env vars, a start and an end time,
    a state, limits, and its own access tokens. One model for every API: the native
    WebSocket attaches to a sandbox, the control plane REST API creates and lists them,
    E2B's envd and code interpreter act inside one.

    The default sandbox (id "default") is the host (isolation none) unless
    --isolate-default: it never ends and is not persisted.

    Persistence: each sandbox other than the default one has a directory under
    <state_dir>/sandboxes/<id>/ with sandbox.json (its settings, end time and tokens; 0600)
    and fs/ (the writable layer). A sandbox whose end time has not passed survives a
    kbridge restart or crash: at the next start it is started again (its processes and
    kernels are gone; sandbox_restarted says so). Expiry or kill removes the directory.

    Ending: at its end time, or on kill, a sandbox's kernels are killed, its observers are
    told (on_end), its processes die with its agent, and its directory is removed in the
    threadpool. The sandbox_t stays valid until the next loop turn after on_end.
*/
#ifndef SANDBOXES_H
#define SANDBOXES_H

#include "sandbox.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>



typedef struct {
    const char *name;  //  as clients name it ("base", "code-interpreter-v1", ...)
    const char *dir;   //  root-filesystem directory; NULL: the host's system
} sandboxes_template_t;

typedef struct {
    const char *state_dir;        //  where sandboxes persist (created if missing)
    const char *agent_path;       //  kbridge-agent
    const char *node_id;          //  prefix of every id ([a-z0-9]{1,8})
    sbx_isolation_t isolation;    //  of new sandboxes
    //  Host paths no sandbox may see besides the state directory (the runtime dir, the
    //  token file...). NULL-terminated, copied.
    const char *const *hidden;
    //  Templates besides "base" (and its E2B names), from --template NAME=DIR.
    const sandboxes_template_t *templates;
    size_t ntemplates;
    //  Limits: the defaults and the most a client may ask for.
    uint64_t memory_bytes;        //  per sandbox (default and maximum)
    uint32_t cpu_millis;          //  0: no CPU limit
    uint32_t pids;
    uint64_t max_timeout_ms;      //  --sandbox-max-timeout
    size_t max_sandboxes;         //  alive at once, the default one excluded
    const char *kernel_user;      //  "user" or "root": kernels in isolated sandboxes
    //  The default sandbox: the host's (borrowed, ready), or NULL with isolate_default to
    //  have it made isolated like the others.
    sbx_t *host;
    bool isolate_default;
    const char *host_home;        //  the default sandbox's cwd (NULL: kbridge's)
    const char *pasta;            //  the pasta executable (NULL: from PATH)
    //  cgroup of the sandboxes, "<parent>/<id>" under each hierarchy; one per kbridge
    //  (its state directory), so that one kbridge never reaps another's (NULL: none).
    const char *cgroup_parent;
    //  Warm pools (bridge/sandboxes/pool.h): kernels of the default kernelspec kept
    //  started in the default sandbox, and sandboxes kept running per template, each with
    //  a kernel of the default kernelspec started (0: none).
    size_t pool_kernels;
    size_t pool_sandboxes;
    //  Warm kernels of other kernelspecs in the default sandbox: name -> count (borrowed;
    //  NULL: none). The default kernelspec's count here, if any, replaces pool_kernels.
    json_t *pool_kernelspecs;
} sandboxes_config_t;

//  The cgroup parent of the kbridge keeping its sandboxes in state_dir: "kbridge/" and a
//  hash of the directory. out: at least 32 bytes.
/*  Creates the state directory and takes its lock for this process's lifetime: two
    kbridges on one state directory would each reap the other's sandboxes as stale.
    Returns the lock's descriptor (close-on-exec; the caller keeps it open), or -1 with
    `why` set when another kbridge holds it. */
int sandboxes_lock_state_dir(const char *state_dir, char *why, size_t why_len);

void sandboxes_cgroup_parent(const char *state_dir, char *out, size_t size);

//  Load the table: restores persisted sandboxes whose end has not passed (removing the
//  others) and starts them again in the background; makes the default sandbox. Blocking
//  (reads the state directory): call at start. Returns NULL with why.
//  Caller owns return value and must destroy it when done.
sandboxes_t *sandboxes_new(uv_loop_t *loop, const sandboxes_config_t *config, registry_t *registry,
                           char *why, size_t size);
//  Kill every sandbox at once (their directories stay, for the next start) and free.
//  Nullifies *self_p.
void sandboxes_destroy(sandboxes_t **self_p);

typedef struct {
    const char *template_id;    //  NULL: "base"
    json_t *metadata;           //  object of strings, borrowed; NULL: none
    json_t *env;                //  object of strings, borrowed; NULL: none
    uint64_t timeout_ms;        //  0: 300 s (E2B's default); capped by max_timeout_ms
    bool no_internet;           //  loopback only
    uint64_t memory_bytes;      //  0: the default; more than the server's limit: KB_ELIMIT
    uint32_t cpu_millis;        //  0: the default
    bool held;                  //  a connection holds it from the start (sandbox_hold)
} sandbox_opts_t;

//  Create a sandbox: returns it, starting (wait for it with sandbox_wait_running; one
//  taken from the warm pool is running at once), or
//  NULL with *err = KB_ENOTFOUND (unknown template), KB_EINVAL (bad options), KB_ELIMIT
//  (max_sandboxes reached, or a limit over the server's), KB_ECLOSED, and why in words.
//  A sandbox that fails to start ends (observers and waiters are told why); nothing of
//  it is left behind. The table owns it.
sandbox_t *sandboxes_create(sandboxes_t *self, const sandbox_opts_t *opts, int *err, char *why,
                            size_t size);

//  The sandbox with this id, unless there is none or it has ended. "default" finds the
//  default sandbox.
sandbox_t *sandboxes_find(sandboxes_t *self, const char *id);
sandbox_t *sandboxes_default(sandboxes_t *self);
//  A snapshot of the sandboxes that have not ended, the default one excluded, in
//  creation order. Caller owns the array (free()), not the sandboxes.
size_t sandboxes_list(sandboxes_t *self, sandbox_t ***sandboxes);
size_t sandboxes_count(const sandboxes_t *self);
registry_t *sandboxes_registry(const sandboxes_t *self);
//  The warm pools, as GET /api/status shows them (pool.h). Caller owns return value.
json_t *sandboxes_pool_status(const sandboxes_t *self);
//  Whether a template name is known.
bool sandboxes_has_template(const sandboxes_t *self, const char *name);
uint64_t sandboxes_max_timeout_ms(const sandboxes_t *self);

//  Observers (the APIs): told when a sandbox ends, so that what lives in it (sessions,
//  contexts, streams) goes. sandbox is valid for the call. Several may be registered.
typedef struct {
    void (*on_end)(sandbox_t *sandbox, const char *why, void *arg);
    //  Paused (frozen) or resumed; NULL: not interested.
    void (*on_state)(sandbox_t *sandbox, void *arg);
} sandboxes_observer_t;
int sandboxes_observe(sandboxes_t *self, const sandboxes_observer_t *observer, void *arg);
void sandboxes_unobserve(sandboxes_t *self, void *arg);

#endif
