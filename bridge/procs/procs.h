/*  procs - the processes every sandbox runs for clients (commands, shells, terminals), as
    the service knows them: one table shared by the APIs that start and watch processes,
    the native WebSocket API and E2B's envd process service (Start, Connect, List,
    SendInput, StreamInput, CloseStdin, SendSignal, Update).

    A process (sproc.h) is started inside its sandbox through the process layer
    (sandbox/proc.h): an argv, an environment made of the sandbox's base (envd's order:
    PATH, HOME, USER, LOGNAME, SHELL, LANG, then the sandbox's env vars; on the host,
    kbridge's own environment plus the sandbox's env vars) with the process's own vars
    on top (they win: the documents' precedence), a cwd (default the sandbox's), a user
    (root or user), stdin on or off, an optional pseudo-terminal, a tag, and an optional
    lifetime after which it is killed (its exit says so).

    Processes belong to the table, not to the client that started them: they outlive
    connections. A client sees one through a listener (splisten_t), attached when it
    starts the process or later, by pid or tag (procs_find, procs_find_tag). A listener
    attached later first gets the process's tail: the last output it produced (bounded,
    1 MiB by default), then output as it is produced. Every byte of output has an offset
    (bytes the process produced before it, all streams together), so a client that saw
    some of it can ask for the rest only.

    Flow control, per process: output is read only as fast as the slowest listener that
    is attached takes it. A listener whose client is congested says so
    (splisten_set_congested); while any is, kbridge stops reading the process's pipes
    (the process blocks on a full pipe; nothing is lost, nothing is buffered without
    bound). With no listener at all, output goes to the tail only, at full speed.

    A process ends when it exits and its output has been read to the end (proc.h). Its
    listeners get on_exit; then it leaves the table (it is no longer found or listed).
    Processes die with their sandbox: when a sandbox ends, each of its processes is
    killed and its listeners get on_exit with sandbox_ended.

    Loop discipline: every callback comes from the loop, never from inside a call into
    this module; listeners may be destroyed, and processes signalled, from inside any
    callback.
*/
#ifndef PROCS_H
#define PROCS_H

#include "sproc.h"
#include "../sandboxes/sandboxes.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct _procs_t procs_t;

#define PROCS_TAIL_DEFAULT (1u << 20)  //  tail of one process
#define PROCS_TAIL_TOTAL (128u << 20)  //  tails of all processes together
#define PROCS_TAIL_MIN (64u << 10)     //  what a process keeps once the total is reached
#define PROCS_MAX_PER_SANDBOX 4096     //  processes alive in one sandbox

typedef struct {
    size_t tail_bytes;       //  0: PROCS_TAIL_DEFAULT
    size_t tail_total;       //  0: PROCS_TAIL_TOTAL
    size_t max_per_sandbox;  //  0: PROCS_MAX_PER_SANDBOX
} procs_config_t;

//  The table, observing sandboxes (its processes die with theirs). config may be NULL.
//  Caller owns return value and must destroy it when done; destroy it before sandboxes.
procs_t *procs_new(uv_loop_t *loop, sandboxes_t *sandboxes, const procs_config_t *config);
//  Kill every process at once, tell no listener, free. Nullifies *self_p.
void procs_destroy(procs_t **self_p);

typedef struct {
    //  The program and its arguments: argv[0] is a path or a name looked up in the
    //  process's PATH. E2B's commands are {"/bin/bash", "-l", "-c", CMD}.
    const char *const *argv;
    json_t *env;              //  object of strings on top of the base (borrowed; NULL: none)
    const char *cwd;          //  absolute, or relative to the sandbox's cwd; NULL: that cwd
    const char *user;         //  "root" or "user"; NULL: "root" (ignored on the host)
    bool stdin_pipe;          //  a stdin kbridge writes (else /dev/null); implied by pty
    bool pty;                 //  one pseudo-terminal for stdin, stdout and stderr
    uint16_t cols, rows;      //  its size (0: 80x24)
    const char *tag;          //  a name to find it by, unique among the sandbox's processes
    uint64_t lifetime_ms;     //  killed (SIGKILL to its group) after this long; 0: never
    size_t tail_bytes;        //  0: the table's default
} sproc_opts_t;

//  Start a process in sandbox sb, with a first listener attached from its very first byte
//  (no replay). Returns the listener; the process is starting: ev->on_start says whether
//  it runs (pid known) or could not be started. Returns NULL with *err and why, nothing
//  started, for: KB_EINVAL (bad options: no argv, an env that is not strings, a user
//  other than root/user, a bad cwd), KB_EEXIST (the tag is taken), KB_EAGAIN (the
//  sandbox is not running: starting or paused), KB_ECLOSED (it ended), KB_ELIMIT
//  (max_per_sandbox), KB_ENOMEM.
//  Caller owns the listener (splisten_destroy); the table owns the process.
splisten_t *procs_start(procs_t *self, sandbox_t *sb, const sproc_opts_t *opts,
                        const splisten_events_t *ev, void *arg, int *err, char *why,
                        size_t size);

//  A process of sandbox sb that runs (started, not yet ended), by its pid as seen in the
//  sandbox, or by tag. NULL if none. Borrowed: valid until its on_exit, or for as long
//  as you hold a listener on it.
sproc_t *procs_find(procs_t *self, const sandbox_t *sb, int pid);
sproc_t *procs_find_tag(procs_t *self, const sandbox_t *sb, const char *tag);
//  The processes of sandbox sb that run, in start order. Caller owns the array (free()),
//  not the processes.
size_t procs_list(procs_t *self, const sandbox_t *sb, sproc_t ***procs);

#endif
