/*  kernel - one Jupyter kernel: its process, its channels and its lifecycle.

    The process runs in a sandbox (sandbox/sbx.h): the default sandbox on the host, as
    today's Jupyter does, or an isolated one. The connection file (fresh ports or ipc
    sockets, a random key) is written where only that sandbox sees it; kbridge connects
    the shell, control and stdin DEALERs, the iopub SUB and the heartbeat, and the kernel
    is ready once a kernel_info_reply and an iopub message have both arrived (the
    PUB/SUB slow joiner). Interrupt, restart (same ports, new process; an automatic
    restart after a death gets fresh ports) and shutdown
    (shutdown_request on control, then SIGTERM, then SIGKILL, 2.5 s apart as
    jupyter_client does) are asynchronous and report through kernel_events_t. A kernel
    that dies unexpectedly can be restarted automatically.

    Nothing is orphaned: shutdown and destroy kill the whole process group and delete
    the connection file, and the sandbox's agent kills whatever is left if kbridge dies.
*/
#ifndef KERNEL_H
#define KERNEL_H

#include "kmsg.h"
#include "kchan.h"
#include "kspec.h"
#include "../sandbox/sbx.h"

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

typedef struct _kernel_t kernel_t;

typedef enum {
    KERNEL_STARTING = 0,    //  spawned, iopub not yet proven live
    KERNEL_IDLE = 1,        //  ready; last iopub status was idle
    KERNEL_BUSY = 2,        //  ready; last iopub status was busy
    KERNEL_RESTARTING = 3,  //  being restarted (on request or after a crash)
    KERNEL_DEAD = 4,        //  no process, and none coming unless restarted
    KERNEL_SHUTDOWN = 5     //  shutdown requested or complete
} kernel_state_t;

//  "starting", "idle", "busy", "restarting", "dead", "dead" (as Jupyter Server names them).
const char *kernel_state_name(kernel_state_t state);

typedef enum {
    KERNEL_EV_READY,       //  shell, iopub and heartbeat proven live after a start or restart
    KERNEL_EV_STATUS,      //  execution state changed (idle/busy)
    KERNEL_EV_DIED,        //  the process exited unexpectedly, or kbridge ended a start that
                           //  would not complete (kernel_exit_reason, kernel_process_was_ready)
    KERNEL_EV_RESTARTING,  //  an automatic restart after a death has begun
    KERNEL_EV_DEAD,        //  gave up: start failed, or too many automatic restarts
    KERNEL_EV_SHUTDOWN,    //  kernel_shutdown() finished; the owner may destroy it now
    //  The process is alive but its heartbeat stopped answering (a stopped or wedged
    //  process): lost after 3 pings in a row, timed out after hb_timeout_ms of silence,
    //  back at the first answer. The kernel's state is unchanged by these.
    KERNEL_EV_HB_LOST,
    KERNEL_EV_HB_TIMEOUT,
    KERNEL_EV_HB_BACK,
    //  New endpoints (an automatic restart on fresh ports): clients with sockets of their
    //  own must reconnect them to kernel_endpoint().
    KERNEL_EV_ENDPOINTS
} kernel_event_t;

typedef struct {
    //  Every verified message from shell, iopub, stdin or control. msg is borrowed.
    void (*on_msg)(kernel_t *kernel, kchan_type_t channel, kmsg_t *msg, void *arg);
    void (*on_event)(kernel_t *kernel, kernel_event_t event, void *arg);
} kernel_events_t;

typedef struct {
    sbx_t *sbx;               //  the sandbox it runs in (borrowed; must be ready)
    const char *id;           //  kernel id; NULL generates a UUID
    const char *cwd;          //  working directory; NULL: the sandbox's default
    const char *user;         //  sandbox user to run as ("user", "root"); NULL: the agent's
    json_t *base_env;         //  the environment it starts from (object of strings;
                              //  borrowed); NULL: kbridge's own
    json_t *env;              //  extra environment (object of strings); borrowed
    const char *transport;    //  "tcp" (default) or "ipc"; isolated sandboxes: always ipc
    const char *ip;           //  default 127.0.0.1 (tcp)
    const char *signature_scheme;  //  "hmac-sha256" (default) or "hmac-sha512"
    bool autorestart;         //  restart automatically after an unexpected death
    int restart_limit;        //  consecutive automatic restarts before giving up (0: 5)
    int ready_timeout_ms;     //  how long a start may take to become ready (0: 60000)
    int hb_timeout_ms;        //  heartbeat silence before KERNEL_EV_HB_TIMEOUT (0: 30000)
    int hb_interval_ms;       //  heartbeat period (0: 3000, or hb_timeout_ms / 4 if less);
                              //  3 misses in a row = lost
} kernel_opts_t;

//  Start a kernel from spec (copied). Returns NULL if it could not be started (*err =
//  KB_ESPAWN, KB_EINVAL for a bad cwd or no sandbox, KB_ECLOSED for a sandbox that is
//  gone, or KB_EIO), with the reason logged. A process that fails later (in an isolated
//  sandbox the executable is looked up there) reports KERNEL_EV_DEAD.
//  Caller owns return value and must destroy it when done.
kernel_t *kernel_new(uv_loop_t *loop, const kspec_t *spec, const kernel_opts_t *opts,
                     const kernel_events_t *events, void *arg, int *err);

//  Kill the process group at once (SIGKILL), remove the connection file and close the
//  channels. No more events are delivered. Safe from inside the kernel's callbacks.
//  Nullifies *self_p.
void kernel_destroy(kernel_t **self_p);

//  Sign and send msg on channel (shell, control or stdin). Takes ownership of *msg_p.
//  Returns 0, KB_EDEAD (no process), KB_ECLOSED (shutting down), KB_EAGAIN (socket full).
int kernel_send(kernel_t *self, kchan_type_t channel, kmsg_t **msg_p);

//  Interrupt: SIGINT to the process group, or interrupt_request on control when the
//  kernelspec's interrupt_mode is "message". In signal mode, while the kernel stays busy
//  with no error and no idle (10 s at most), SIGINT is repeated once to its main thread
//  when that thread has slept in one system call for half a second (a signal that raced
//  the call leaves it asleep), never while it runs. Returns 0 or KB_EDEAD.
int kernel_interrupt(kernel_t *self);

//  Restart: a graceful shutdown with restart=true, then the same argv on the same ports.
//  Works on a dead kernel too. KERNEL_EV_READY (or KERNEL_EV_DEAD) reports the outcome.
//  Returns 0, or KB_ECLOSED if a shutdown is under way.
int kernel_restart(kernel_t *self);

//  Graceful shutdown: interrupt, shutdown_request on control, SIGTERM after 2.5 s,
//  SIGKILL after 2.5 s more. KERNEL_EV_SHUTDOWN reports completion. Idempotent.
void kernel_shutdown(kernel_t *self);

//  A message of msg_type for this kernel, in kbridge's own client session.
//  Caller owns return value.
kmsg_t *kernel_msg_new(kernel_t *self, const char *msg_type, json_t *content);
//  The same with the content as serialized JSON text (kmsg_new_text).
kmsg_t *kernel_msg_new_text(kernel_t *self, const char *msg_type, const char *content, size_t len);

//  Borrowed accessors.
const char *kernel_id(const kernel_t *self);
const char *kernel_name(const kernel_t *self);
const kspec_t *kernel_spec(const kernel_t *self);
//  kbridge's client session id in messages it sends to this kernel.
const char *kernel_session(const kernel_t *self);
kernel_state_t kernel_state(const kernel_t *self);
//  The language from kernel_info (language_info.name), or the kernelspec's language.
const char *kernel_language(const kernel_t *self);
//  content of the last kernel_info_reply, or NULL before the first.
json_t *kernel_info(const kernel_t *self);
const char *kernel_cwd(const kernel_t *self);
//  The sandbox user it runs as (NULL: the agent's).
const char *kernel_user(const kernel_t *self);
//  Whether it runs in an isolated sandbox (its cwd is a path inside).
bool kernel_isolated(const kernel_t *self);
//  The environment its process starts with: the base, the kernelspec's env, the extra
//  env, JPY_PARENT_PID. Caller owns return value (NULL: out of memory).
json_t *kernel_process_env(const kernel_t *self);
//  The same were it started from base_env and env (borrowed; as in kernel_opts_t).
json_t *kernel_process_env_at(const kernel_t *self, json_t *base_env, json_t *env);
//  Where its next process (a restart) starts: cwd (NULL: the sandbox's default), base_env
//  and env as in kernel_opts_t (borrowed, copied). The running process is left as it is:
//  a caller that moves a running kernel (a warm pool's claim) applies the change to it
//  itself. Returns 0, KB_EINVAL (a host cwd that is not a directory) or KB_ENOMEM.
int kernel_replace_place(kernel_t *self, const char *cwd, json_t *base_env, json_t *env);
//  Why the last process ended, e.g. "killed by signal 9 (Killed)"; "" if it has not.
const char *kernel_exit_reason(const kernel_t *self);
//  Why the last process could not be started (KB_ENOTDIR: its cwd; KB_ENOTFOUND: its
//  executable...), or 0 if it was.
int kernel_start_error(const kernel_t *self);
//  Endpoint of a channel, for clients that need their own sockets (borrowed). NULL for
//  kernels in isolated sandboxes: kbridge reaches their sockets by fd, per process.
const char *kernel_endpoint(const kernel_t *self, kchan_type_t channel);
//  The signer for this kernel's messages (borrowed; lives as long as the kernel).
hmac_t *kernel_hmac(const kernel_t *self);
//  The connection file's path, as processes in the kernel's sandbox see it.
const char *kernel_connection_file(const kernel_t *self);
//  Process id of the running kernel (as its sandbox sees it), or 0.
int kernel_pid(const kernel_t *self);
//  The sandbox it runs in.
sbx_t *kernel_sbx(const kernel_t *self);
//  True if the last process was killed by its sandbox's memory limit.
bool kernel_oom_killed(const kernel_t *self);
//  Whether the current process (after KERNEL_EV_DIED: the one that died) became ready. One
//  that died before ran nothing: what waits for the kernel may wait for the next start.
bool kernel_process_was_ready(const kernel_t *self);
//  False after three heartbeats in a row went unanswered, until one is answered.
bool kernel_heartbeat_ok(const kernel_t *self);
//  True once the heartbeat has been silent for the heartbeat timeout, until it answers.
bool kernel_heartbeat_expired(const kernel_t *self);
int kernel_heartbeat_timeout_ms(const kernel_t *self);
//  Number of processes started for this kernel (1 + restarts).
int kernel_generation(const kernel_t *self);

#endif
