/*  sproc - one process of the process table (procs.h), and the listeners through which
    clients see it.

    The table owns the process. Everything here is callable from inside any callback of
    this module (nothing is freed under a running callback).
*/
#ifndef SPROC_H
#define SPROC_H

#include "../../sandbox/proc.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _sproc_t sproc_t;
typedef struct _splisten_t splisten_t;

//  How a process ended.
typedef struct {
    int pid;
    bool exited;         //  it exited (code is its status) rather than being killed
    int code;            //  exit status; -1 when killed by a signal (as envd reports it)
    int signal;          //  the signal that killed it; 0 when it exited
    const char *status;  //  "exit status 1", "signal: killed": Go's wording, which E2B's
                         //  clients show and envd sends as EndEvent.status
    //  Why kbridge ended it, or NULL: "killed after its timeout of 3000 ms", "the sandbox
    //  ended: <why>", "killed by the sandbox's memory limit".
    const char *error;
    bool timed_out, sandbox_ended, oom_killed;
} sproc_exit_t;

typedef struct {
    //  The first listener only (procs_start): the process runs (err 0; its pid is known)
    //  or could not be started: err KB_ENOTFOUND (no such program), KB_ENOTDIR (the cwd is
    //  not a directory), KB_EACCES, KB_ELIMIT (the sandbox's pids limit), KB_ECLOSED (the
    //  sandbox ended), KB_ESPAWN, with why in words. After an error no other event comes.
    void (*on_start)(splisten_t *l, int err, const char *why, void *arg);
    //  Output (borrowed for the call): stream PROC_STDOUT, PROC_STDERR or PROC_PTY; offset
    //  is where data starts in the process's output; replay is true for the tail sent to
    //  a listener that attached late (it comes first, before any live output).
    void (*on_output)(splisten_t *l, proc_stream_t stream, const char *data, size_t len,
                      uint64_t offset, bool replay, void *arg);
    //  The end, after the last output. No other event comes.
    void (*on_exit)(splisten_t *l, const sproc_exit_t *exit, void *arg);
} splisten_events_t;

//  Attach a listener to a running process. It first gets the tail from offset since (0:
//  all of it; sproc_offset(): none), from a later loop turn, then live output and the
//  exit. NULL if the process has ended, or on allocation failure.
//  Caller owns return value and must destroy it when done.
splisten_t *sproc_attach(sproc_t *self, uint64_t since, const splisten_events_t *ev, void *arg);
//  Stop listening (the process runs on). Safe from inside its callbacks. Nullifies *self_p.
void splisten_destroy(splisten_t **self_p);
//  The process listened to. Valid while the listener is.
sproc_t *splisten_proc(const splisten_t *self);
//  The client behind this listener cannot take more for now (true) / can again (false).
//  While any listener of a process is congested its output is not read.
void splisten_set_congested(splisten_t *self, bool congested);

//  Write to stdin (or the pty): 0, KB_EINVAL (started without stdin), KB_EDEAD (stdin
//  closed, or the process ended), KB_EAGAIN (not started yet), KB_ETOOBIG (4 MiB already
//  pending: the process is not reading).
int sproc_write(sproc_t *self, const void *data, size_t len);
//  Close stdin (the process reads EOF): 0 or KB_EINVAL (no stdin, or a pty: send ^D).
int sproc_close_stdin(sproc_t *self);
//  Send a signal to its process group: 0, KB_EDEAD (it ended), KB_EINVAL (bad signo).
int sproc_signal(sproc_t *self, int signo);
//  Resize its pty: 0, KB_EINVAL (no pty, or a zero size), KB_EDEAD.
int sproc_resize(sproc_t *self, uint16_t cols, uint16_t rows);

//  What it was started with and what it is. Borrowed, valid as the process is.
int sproc_pid(const sproc_t *self);          //  0 until started
bool sproc_running(const sproc_t *self);     //  started and not ended
const char *sproc_tag(const sproc_t *self);  //  NULL: none
const char *const *sproc_argv(const sproc_t *self);
json_t *sproc_env(const sproc_t *self);      //  the process's own vars, as given ({} if none)
const char *sproc_cwd(const sproc_t *self);  //  absolute
const char *sproc_user(const sproc_t *self);
bool sproc_has_stdin(const sproc_t *self);
bool sproc_pty(const sproc_t *self, uint16_t *cols, uint16_t *rows);
//  Bytes of output produced so far (the offset the next byte will have).
uint64_t sproc_offset(const sproc_t *self);
//  {pid, tag, cmd, args, env, cwd, user, stdin, pty: {cols, rows} | null}: the model every
//  API lists (cmd is argv[0], args the rest, as envd's ProcessConfig). Caller owns it.
json_t *sproc_info(const sproc_t *self);

//  Signal numbers by name ("SIGTERM", "TERM", "term", "15"): the number, or 0.
int sproc_signo(const char *name);

#endif
