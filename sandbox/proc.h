/*  proc - one process run inside a sandbox: its stdio, its exit, its signals.

    Every process kbridge starts - kernels, commands, terminals - is started by the agent
    of a sandbox (sbx.h), which forks it in its own session and process group, as the
    requested user, with the given argv, environment and cwd, and hands kbridge the
    parent ends of its stdio (pipes, or a pseudo-terminal master). kbridge reads output
    from those fds itself, so flow control is kbridge's: proc_pause_output() stops
    reading (the process blocks once the pipe is full: nothing is lost or buffered
    without bound) and proc_resume_output() starts again.

    The exit is reported once the process has exited AND its output pipes are at EOF (or
    closed), so on_exit always comes after the last on_output. Descendants that outlive
    the process are the sandbox's business (sbx_destroy kills everything).

    The default sandbox (isolation none) runs on the host, as kbridge's user: the same
    code path, without namespaces.
*/
#ifndef PROC_H
#define PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct _sbx_t sbx_t;
typedef struct _proc_t proc_t;

typedef enum { PROC_STDOUT = 1, PROC_STDERR = 2, PROC_PTY = 3 } proc_stream_t;

typedef struct {
    const char *const *argv;  //  argv[0]: a path, or a name looked up in env's PATH
    const char *const *env;   //  the whole environment, "K=V" strings, NULL-terminated
    const char *cwd;          //  NULL: the user's home directory
    const char *user;         //  "root" or "user" (uid 0 / 1000 in the sandbox); NULL:
                              //  the agent's own user (kbridge's user on the host)
    bool stdin_pipe;          //  a pipe kbridge writes (else /dev/null); implied by pty
    bool pty;                 //  one pseudo-terminal for stdin, stdout and stderr
    uint16_t cols, rows;      //  its size (pty only; 0: 80x24)
    bool log_output;          //  kernels: read output as lines into kbridge's log instead of
                              //  on_output (and on_exit does not wait for its EOF); label
                              //  names the process there
    const char *label;
} proc_opts_t;

typedef struct {
    int pid;          //  as seen in the sandbox
    bool exited;      //  exited normally (code is valid) rather than killed (signal is)
    int64_t code;
    int signal;
    bool oom_killed;  //  the sandbox's memory limit killed it
} proc_exit_t;

typedef struct {
    //  The process is running (err 0, pid set) or could not be started: err is
    //  KB_ENOTFOUND (no such executable), KB_ENOTDIR (cwd is not a directory), KB_EACCES,
    //  KB_ELIMIT (the sandbox's pids limit), KB_ECLOSED (the sandbox is gone) or KB_ESPAWN,
    //  with why in words. After an error no other event comes; destroy the proc.
    void (*on_start)(proc_t *proc, int err, const char *why, void *arg);
    //  Output as read (borrowed for the call). Not called with log_output.
    void (*on_output)(proc_t *proc, proc_stream_t stream, const char *data, size_t len,
                      void *arg);
    //  The end: after the last output. The proc may be destroyed from inside this call.
    void (*on_exit)(proc_t *proc, const proc_exit_t *exit, void *arg);
} proc_events_t;

//  Start a process in sbx. Returns NULL only if the request could not even be queued
//  (*err = KB_ENOMEM, KB_EINVAL for bad options, KB_ECLOSED for a sandbox that is gone);
//  otherwise on_start reports the outcome from a later loop turn.
//  Caller owns return value and must destroy it when done.
proc_t *proc_spawn(sbx_t *sbx, const proc_opts_t *opts, const proc_events_t *events, void *arg,
                   int *err);

//  Kill the process group at once (SIGKILL) if it still runs, stop every callback, free.
//  Safe from inside the proc's own callbacks. Nullifies *self_p.
void proc_destroy(proc_t **self_p);

//  Send signo to the process group. Returns 0, KB_EDEAD (already exited) or KB_EINVAL.
int proc_signal(proc_t *self, int signo);
//  Repeat signo to the process's main thread, only if that thread has been asleep in
//  one system call since the previous call (the first call after a proc_signal only
//  measures), once per proc_signal: for a signal that raced a blocking call and did not
//  end it. Returns 0, KB_EDEAD or KB_EINVAL; whether it was repeated is not reported.
int proc_signal_again_if_asleep(proc_t *self, int signo);
//  SIGTERM to the group, then SIGKILL after grace_ms if it has not exited.
void proc_terminate(proc_t *self, uint64_t grace_ms);

//  Write to stdin (or the pty). data is copied. Returns 0, KB_EINVAL (no stdin), KB_EDEAD
//  (closed), KB_EAGAIN (before on_start: nothing is queued), or KB_ETOOBIG (more than the
//  stdin buffer limit, 4 MiB, is pending).
int proc_write(proc_t *self, const void *data, size_t len);
//  Bytes written with proc_write not yet taken by the process.
size_t proc_write_pending(const proc_t *self);
//  Close stdin: the process reads EOF. Returns 0 or KB_EINVAL (no stdin pipe).
int proc_close_stdin(proc_t *self);
//  Resize the pty. Returns 0 or KB_EINVAL (no pty, or a zero size).
int proc_resize(proc_t *self, uint16_t cols, uint16_t rows);

//  Stop / resume reading output (backpressure). Idempotent.
void proc_pause_output(proc_t *self);
void proc_resume_output(proc_t *self);

int proc_pid(const proc_t *self);
bool proc_running(const proc_t *self);  //  started and not yet exited
sbx_t *proc_sbx(const proc_t *self);

#endif
