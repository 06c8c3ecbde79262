/*  sandbox - one sandbox as the service knows it (bridge/sandboxes/sandboxes.h has the
    model): its sbx_t when running, its settings, tokens, clock and kernels. Owned by the
    sandboxes table; a pointer stays valid until the loop turn after its end.
*/
#ifndef SANDBOX_H
#define SANDBOX_H

#include "../kernels/registry.h"
#include "../../base/klist.h"
#include "../../sandbox/sbx.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct _sandboxes_t sandboxes_t;
typedef struct _sandbox_t sandbox_t;

typedef enum {
    SANDBOX_STARTING,  //  being created (or started again after a restart)
    SANDBOX_RUNNING,
    SANDBOX_PAUSED,    //  frozen; its clock is stopped
    SANDBOX_ENDED      //  gone (only seen by on_end and code holding a stale pointer)
} sandbox_state_t;

const char *sandbox_id(const sandbox_t *self);
bool sandbox_is_default(const sandbox_t *self);
sandbox_state_t sandbox_state(const sandbox_t *self);
//  "starting", "running", "paused", "ended".
const char *sandbox_state_name(const sandbox_t *self);
//  The running sandbox (NULL unless SANDBOX_RUNNING). Borrowed.
sbx_t *sandbox_sbx(const sandbox_t *self);
//  The template as the client named it.
const char *sandbox_template(const sandbox_t *self);
//  Objects of strings. Borrowed; never NULL.
json_t *sandbox_metadata(const sandbox_t *self);
json_t *sandbox_env(const sandbox_t *self);
//  The default working directory of its processes and kernels ("/home/user"; the
//  default sandbox: kbridge's cwd or host_home).
const char *sandbox_cwd(const sandbox_t *self);
//  The user kernels run as inside ("user" by default; NULL in a host sandbox).
const char *sandbox_kernel_user(const sandbox_t *self);
//  The wall clock, ms since the epoch (what the times below are in).
int64_t sandbox_now_ms(void);
//  Wall-clock times, ms since the epoch. The end of a paused sandbox moves with the
//  clock (its remaining time is frozen); the default sandbox never ends (0).
int64_t sandbox_started_at(const sandbox_t *self);
int64_t sandbox_end_at(const sandbox_t *self);
uint64_t sandbox_memory_bytes(const sandbox_t *self);
uint32_t sandbox_cpu_millis(const sandbox_t *self);
bool sandbox_internet(const sandbox_t *self);
//  Started again after a kbridge restart: its processes and kernels were lost.
bool sandbox_restarted(const sandbox_t *self);
//  Its own tokens: envd's access token, and the traffic token for the code interpreter
//  and the port proxy. Borrowed.
const char *sandbox_envd_token(const sandbox_t *self);
const char *sandbox_traffic_token(const sandbox_t *self);
//  Whether token is one of this sandbox's own (constant time).
bool sandbox_token_ok(const sandbox_t *self, const char *token);
//  Whether token is this sandbox's traffic token (constant time): what the port proxy
//  accepts besides kbridge's token.
bool sandbox_traffic_token_ok(const sandbox_t *self, const char *token);

//  End at now + ms (capped by the server's max timeout; the default sandbox: no-op).
//  Returns the new end (ms since the epoch).
int64_t sandbox_set_timeout(sandbox_t *self, uint64_t ms);
//  Freeze every process and stop the clock / thaw and restart it. Returns 0,
//  KB_EINVAL (the default sandbox, or no freezer on this host), KB_EAGAIN (starting).
int sandbox_pause(sandbox_t *self);
int sandbox_resume(sandbox_t *self);
//  End it now (why: for the log and the observers).
void sandbox_kill(sandbox_t *self, const char *why);

//  A connection holds the sandbox alive; when the last hold goes, its end becomes at
//  least now + keep_alive_ms.
void sandbox_hold(sandbox_t *self);
void sandbox_release(sandbox_t *self, uint64_t keep_alive_ms);

//  The environment every process of user ("root", "user"; NULL: the kernel user) starts
//  from inside an isolated sandbox, as envd orders it: PATH, HOME, USER, LOGNAME, SHELL,
//  LANG, then the sandbox's env vars. NULL for a host sandbox (kbridge's environment is
//  the base there). Caller owns return value.
json_t *sandbox_base_env(const sandbox_t *self, const char *user);

//  Start a kernel in the sandbox, as its kernel user, in cwd (NULL: sandbox_cwd) with
//  the sandbox's env plus env (borrowed; NULL: none). As registry_start, plus KB_EAGAIN
//  when the sandbox is not running.
kentry_t *sandbox_start_kernel(sandbox_t *self, const char *kernel_name, const char *cwd,
                               json_t *env, int *err);
//  Whether a kernel runs in this sandbox.
bool sandbox_has_kernel(const sandbox_t *self, const kentry_t *entry);
//  Its kernels that are not shutting down, in start order. Caller owns the array.
size_t sandbox_kernels(const sandbox_t *self, kentry_t ***entries);

//  The envd version kbridge's envd implements the features of (E2B's SDKs gate calls on
//  it: e2b-selfhost.md 3.3).
#define SANDBOX_ENVD_VERSION "0.6.1"

//  The model every API reports (the control plane's Sandbox object): sandboxID,
//  templateID, alias, clientID, envdVersion, startedAt, endAt, state, cpuCount, memoryMB,
//  diskSizeMB, metadata, allowInternetAccess, restarted. Caller owns return value.
json_t *sandbox_model(const sandbox_t *self);

//  Wait until the sandbox runs. Returns true if it already does (fn is then not called);
//  otherwise fn runs once, from a later turn: err 0 (running) or the reason it ended
//  (KB_ECLOSED, or its start's error, with why). Embed the waiter in the waiting object.
typedef struct _sandbox_wait_t sandbox_wait_t;
struct _sandbox_wait_t {
    void (*fn)(sandbox_wait_t *wait, sandbox_t *sandbox, int err, const char *why);
    void *arg;
    klist_t link;
    sandbox_t *sandbox;  //  set while waiting
};
bool sandbox_wait_running(sandbox_t *self, sandbox_wait_t *wait);
//  Stop waiting (no-op if not waiting).
void sandbox_unwait(sandbox_wait_t *wait);

#endif
